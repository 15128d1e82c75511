"""The ``clearance`` command line. Errors become one line on stderr naming the input and why."""
from __future__ import annotations

import errno
import getpass
import json
import os
import sys
from pathlib import Path

import click

from detector.errors import AudioError, ClearanceError, NotFound, StorageError
from detector.policy import Rights, WorkRights
from index.pipeline import IndexEngine
from index.reviews import Actor, Review
from index.store import Store, work_dict
from service.auth import Role, create_key
from service.engine import Engine
from service.settings import Settings

RIGHTS = click.Choice([r.value for r in Rights])
WORK_RIGHTS = click.Choice([r.value for r in WorkRights])


def fail(message: str, code: int = 1):
    click.echo(f"clearance: {message}", err=True)
    sys.exit(code)


class Commands(click.Group):
    """The commands, whose errors end here. A catalog this process may not use (a home or
    database it may not write, a database that is missing) exits 2, as an unusable input does;
    Clearance's other errors exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StorageError as exc:
            fail(str(exc), 2)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fail(f"{exc.filename}: {exc.strerror}", 2)
        except ClearanceError as exc:
            fail(str(exc))


def _check_writable(engine: Engine, files: bool = True) -> None:
    """Stop (``StorageError``) before any work unless this process may change the catalog:
    write its database and, with ``files``, write in its home (index, stored vectors, locks,
    kept outputs)."""
    engine.store.check_writable()
    home = engine.settings.home
    if files and not os.access(home, os.W_OK):
        raise StorageError(str(home), "this user may not write in this folder, where the catalog keeps its index, "
                                      "vectors and locks")


def _reader(engine: Engine) -> Store:
    """The catalog database opened read-only: listing it needs no write access and changes nothing."""
    return Store(engine.settings.db_url, read_only=True)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), help="catalog folder [env CLEARANCE_HOME; default ./.clearance]")
@click.option("--db", help="database URL [env CLEARANCE_DB; default SQLite inside home]")
@click.pass_context
def main(ctx: click.Context, home: Path | None, db: str | None) -> None:
    """Clearance: find near-copies of catalog recordings in generated music."""
    overrides = {k: v for k, v in {"home": home, "db": db}.items() if v is not None}
    ctx.obj = Engine(Settings(**overrides))


@main.command("index")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--rights", type=RIGHTS, help="protected (block copies) or licensed (attribute them); needed with PATHS")
@click.option("--owner", default="", help="rights holder recorded for every track")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with path and track_id (or external_id), optional title, owner and the work recorded "
                   "(work_id, work_title, work_owner, work_rights)")
@click.option("--workers", type=click.IntRange(min=0), help="workers that decode, embed, Chromaprint and take landmarks "
                                                            "[env CLEARANCE_INDEX_WORKERS; default one per core; "
                                                            "0: in this process]")
@click.option("--engine", "engine_name", type=click.Choice([e.value for e in IndexEngine]),
              help="local worker processes or Ray Data tasks [env CLEARANCE_INDEX_ENGINE; default local]")
@click.option("--ray-address", help="Ray cluster for --engine ray [env CLEARANCE_RAY_ADDRESS or RAY_ADDRESS; "
                                    "default a local Ray instance]")
@click.option("--rebuild", is_flag=True, help="retrain and rebuild the index from the stored vectors (after PATHS "
                                              "are indexed), embedding again what the loaded model has no vectors for")
@click.pass_obj
def index_cmd(engine: Engine, paths, rights, owner, manifest, workers, engine_name, ray_address, rebuild) -> None:
    """Fingerprint audio files and folders (recursively) into the catalog.

    Runs decode → embed → add over worker processes; a file that cannot be indexed is reported
    and the job goes on. Files already in the catalog (same content) are skipped, so a job that
    was stopped, even killed, finishes when run again; one the catalog has under another id is
    named. Exits 2 when a file failed or a folder held no audio files.
    """
    from tqdm import tqdm

    s = engine.settings
    if not paths and not rebuild:
        fail("give audio files or folders to index, or --rebuild")
    if paths and not rights:
        fail("--rights is required: protected (block copies) or licensed (attribute them)")
    _check_writable(engine)
    run = {"workers": s.index_workers if workers is None else workers, "engine": engine_name or s.index_engine,
           "ray_address": ray_address or s.ray_address}
    try:
        if paths:
            files, empty = _audio_files(paths)
            with tqdm(total=len(files), unit="track", file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
                audio = [0.0]

                def progress(path: str, outcome: str, seconds: float) -> None:
                    audio[0] += seconds
                    rate = audio[0] / max(bar.format_dict["elapsed"], 1e-9)
                    bar.set_postfix_str(f"{audio[0] / 3600:.2f} h audio, {rate:.0f}x real time", refresh=False)
                    bar.update(1)

                summary = engine.catalog.index_paths(files, Rights(rights), owner=owner, manifest=manifest,
                                                     progress=progress, publish_every_s=s.index_publish_s, **run)
            click.echo(f"indexed {len(summary.indexed)} tracks ({summary.audio_s / 3600:.2f} h of audio), "
                       f"skipped {len(summary.skipped)} already present, failed {len(summary.failed)} "
                       f"in {summary.elapsed_s:.0f} s ({summary.audio_s / max(summary.elapsed_s, 1e-9):.0f}x real time)")
            for path, wanted, kept in summary.renamed:
                click.echo(f"skipped: {path}: the same audio is in the catalog as '{kept}', so '{wanted}' was not "
                           f"added (a check names '{kept}')", err=True)
            for said, kept in summary.works_kept:
                click.echo(f"work {kept.external_id}: the catalog keeps its own ({_work_facts(kept)}), not the "
                           f"manifest's ({_work_facts(said)}); change it with `clearance work`, audited", err=True)
            for path, reason in summary.failed:
                click.echo(f"failed: {path}: {reason}", err=True)
            if summary.rebuilt:
                _print_rebuild(summary.rebuilt)
        if rebuild:
            with tqdm(unit="track", desc="taken again from their files", file=sys.stderr, dynamic_ncols=True,
                      disable=None) as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                _print_rebuild(engine.catalog.rebuild(progress=progress, **run))
    except KeyboardInterrupt:
        fail("interrupted: the tracks finished so far are in the catalog; run the same command again to do the rest",
             130)
    if paths and (summary.failed or empty):
        sys.exit(2)


def _work_facts(work) -> str:
    return f"{work.rights.value}, {work.owner or 'owner not recorded'}, '{work.title}'"


def _audio_files(paths) -> tuple[list[Path], list[Path]]:
    """The audio files that ``paths`` name (folders searched recursively) and the folders that
    hold none, each of which is reported on stderr."""
    from detector.audio import AUDIO_SUFFIXES, find_audio

    files, empty = [], []
    for p in map(Path, paths):
        found = find_audio([p])
        if p.is_dir() and not found:
            empty.append(p)
            click.echo(f"clearance: {p}: no audio files in this folder (looked for {' '.join(sorted(AUDIO_SUFFIXES))})",
                       err=True)
        files += found
    return files, empty


def _print_rebuild(r) -> None:
    recall = "exact search" if r.recall == 1.0 and r.factory == "Flat" else f"recall@1 {r.recall:.3f} against exact search"
    again = f"{r.reembedded} embedded again" + (f", {r.repicked} of them for their landmark peaks" if r.repicked else "")
    click.echo(f"index rebuilt: {r.factory}, {r.vectors} vectors of {r.tracks} tracks ({again}), "
               f"{r.mb_per_hour:.2f} MB per hour of audio, {recall}, {r.elapsed_s:.0f} s")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per input per line (JSON Lines)")
@click.pass_obj
def check(engine: Engine, files, as_json: bool) -> None:
    """Check generated outputs against the catalog and print a decision for each. FILES are audio
    files or folders (their audio files, recursively, in path order)."""
    _check_writable(engine, files=engine.settings.keep_outputs)
    inputs, empty = _audio_files(files)
    unreadable = len(empty)
    for f in inputs:
        try:
            result = engine.check(f, name=str(f))
        except AudioError as exc:
            unreadable += 1
            click.echo(f"clearance: {exc.source}: {exc.reason}", err=True)
            continue
        if as_json:
            click.echo(json.dumps(result))
        else:
            click.echo(f"{result['input']}: {result['decision'].upper()}  ({result['duration_s']:.1f} s, "
                       f"{result['elapsed_ms']} ms, id {result['id']})")
            for reason in result["reasons"]:
                click.echo(f"    {reason}")
    if unreadable:
        sys.exit(2)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per track per line")
@click.pass_obj
def tracks(engine: Engine, as_json: bool) -> None:
    """List the catalog."""
    for t in _reader(engine).list_tracks():
        if as_json:
            click.echo(json.dumps(t.to_dict()))
        else:
            work = f"{t.work.external_id} ({t.work.rights.value})" if t.work else "-"
            click.echo(f"{t.external_id}\t{t.rights.value}\t{t.owner}\t{t.duration_s:.1f} s\t{t.title}\twork {work}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per work per line")
@click.pass_obj
def works(engine: Engine, as_json: bool) -> None:
    """List the works (songs) of the catalog, with the tracks that record them."""
    for work, recordings in _reader(engine).list_works():
        if as_json:
            click.echo(json.dumps(work_dict(work, recordings)))
        else:
            click.echo(f"{work.external_id}\t{work.rights.value}\t{work.owner}\t{work.title}\t"
                       f"{', '.join(recordings) or 'no recordings'}")


@main.command()
@click.argument("work_id")
@click.option("--title", help="the work's title")
@click.option("--owner", help="the work's rights holder (a publisher)")
@click.option("--rights", type=WORK_RIGHTS, help="protected, licensed or unknown [new works: unknown]")
@click.option("--track", "tracks_", multiple=True, help="a track that records this work (repeat for several)")
@click.option("--note", default="", help="why (a licence reference, a ticket); kept in the audit log")
@click.pass_obj
def work(engine: Engine, work_id: str, title, owner, rights, tracks_, note: str) -> None:
    """Add a work (an ISWC or the catalog's own id) or change it, and name the tracks that record
    it. A copy of a track is decided by its recording's rights and its work's, a re-performance
    by its work's alone (see the policy's [works] table); the next check uses them. A new work,
    a change of its rights and of a track's work are audited as made on the command line."""
    _check_writable(engine, files=False)
    actor, review = _cli_actor(), Review(engine.store)
    w = review.put_work(work_id, title=title, owner=owner, rights=WorkRights(rights) if rights else None, actor=actor,
                        note=note)
    for t in tracks_:
        review.link_work(t, w.external_id, actor=actor, note=note)
    click.echo(f"work {w.external_id}: {w.rights.value}, {w.owner or 'owner not recorded'}"
               + (f"; recorded by {', '.join(tracks_)}" if tracks_ else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per failure per line")
@click.pass_obj
def failures(engine: Engine, as_json: bool) -> None:
    """List the files indexing jobs could not index, and why, oldest first (a log: a file that
    was indexed later is still listed)."""
    for path, reason, when in _reader(engine).list_failures():
        stamp = when.isoformat(timespec="seconds")
        if as_json:
            click.echo(json.dumps({"path": path, "reason": reason, "at": stamp}))
        else:
            click.echo(f"{stamp}\t{path}: {reason}")


@main.command()
@click.argument("external_ids", nargs=-1, required=True)
@click.pass_obj
def remove(engine: Engine, external_ids) -> None:
    """Take tracks down: remove them and their fingerprints from the catalog."""
    _check_writable(engine)
    gone = engine.catalog.remove(list(external_ids))
    click.echo(f"removed {len(gone)} tracks")


@main.command()
@click.argument("external_ids", nargs=-1, required=True)
@click.option("--rights", type=WORK_RIGHTS, required=True, help="protected or licensed (works: or unknown)")
@click.option("--work", "of_works", is_flag=True, help="the ids are works' (songs'), not tracks'")
@click.option("--note", default="", help="why (a licence reference, a ticket); kept in the audit log")
@click.pass_obj
def rights(engine: Engine, external_ids, rights: str, of_works: bool, note: str) -> None:
    """Change the rights of tracks (their recordings) or, with --work, of works; the next check
    uses them, no re-indexing. Each change is audited as made on the command line by this
    system user."""
    if not of_works and rights not in {r.value for r in Rights}:
        fail(f"a recording is protected or licensed, not {rights}; use --work for a work's rights")
    _check_writable(engine, files=False)
    actor, review = _cli_actor(), Review(engine.store)
    for e in external_ids:
        if of_works:
            if engine.store.find_work(e) is None:
                raise NotFound(f"no work with id '{e}'; add it with `clearance work {e}`")
            review.put_work(e, rights=WorkRights(rights), actor=actor, note=note)
        else:
            review.change_rights(e, Rights(rights), actor=actor, note=note)
    n = len(external_ids)
    click.echo(f"{n} {'work' if of_works else 'track'}{'' if n == 1 else 's'} now {rights}")


def _cli_actor() -> Actor:
    """Changes made on the command line are audited as this system user's."""
    return Actor("cli", f"{getpass.getuser()} (command line)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--shards", type=click.IntRange(min=1), help="search the catalog in this many shards, split by track "
                                                           "[env CLEARANCE_SERVE_SHARDS; default 1: whole]")
@click.option("--engine", "engine_name", type=click.Choice([e.value for e in IndexEngine]),
              help="hold the shards in this process or on Ray Serve [env CLEARANCE_SERVE_ENGINE; default local]")
@click.option("--replicas", type=click.IntRange(min=1), help="Ray Serve replicas per shard [env CLEARANCE_SERVE_REPLICAS; "
                                                             "default 1]")
@click.option("--ray-address", help="Ray cluster for --engine ray [env CLEARANCE_RAY_ADDRESS or RAY_ADDRESS; "
                                    "default a local Ray instance]")
@click.pass_obj
def serve(engine: Engine, host: str, port: int, shards, engine_name, replicas, ray_address) -> None:
    """Run the HTTP API. A connection that sends no complete request head within
    CLEARANCE_HEADER_TIMEOUT_S of opening or of its previous answer is closed, and one idle
    between requests after 5 s (uvicorn's keep-alive timeout).

    With --engine ray the catalog is searched in --shards shards, each a Ray Serve deployment of
    --replicas replicas; a check is decided exactly as the whole catalog decides it, and answered
    503 while a shard has no replica running (Serve replaces a replica that dies)."""
    given = {"serve_shards": shards, "serve_engine": engine_name and IndexEngine(engine_name), "serve_replicas": replicas,
             "ray_address": ray_address}
    engine = Engine(engine.settings.model_copy(update={k: v for k, v in given.items() if v is not None}))
    _check_writable(engine)
    from functools import partial

    import uvicorn

    from service.api import create_app
    from service.pool import one_malloc_arena
    from service.uploads import HeadTimeoutH11

    one_malloc_arena()              # before the first worker thread starts
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info",
                http=partial(HeadTimeoutH11, head_timeout_s=engine.settings.header_timeout_s))


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--name", default="", help="who the key is for")
@click.pass_obj
def keys_create(engine: Engine, role: str, name: str) -> None:
    """Create a key; it is printed once, as the last word of the output."""
    _check_writable(engine, files=False)
    key_id, key = create_key(engine.store, Role(role), name)
    click.echo(f"created {role} key {key_id} for {name or 'unnamed'}; store it now, it is not shown again: {key}")


@keys.command("list")
@click.pass_obj
def keys_list(engine: Engine) -> None:
    """List keys (ids, names, roles; never the keys themselves)."""
    for k in _reader(engine).list_keys():
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        click.echo(f"{k.id}\t{k.role}\t{state}\t{k.name}")


@keys.command("revoke")
@click.argument("key_ids", nargs=-1, required=True)
@click.pass_obj
def keys_revoke(engine: Engine, key_ids) -> None:
    """Revoke keys by id; they stop working at once."""
    _check_writable(engine, files=False)
    for k in key_ids:
        engine.store.revoke_key(k)
    click.echo(f"revoked {len(key_ids)} keys")


@main.command("settings")
def settings_cmd() -> None:
    """Print every setting, its environment variable, default and meaning."""
    for name, f in Settings.model_fields.items():
        click.echo(f"CLEARANCE_{name.upper():<18} default {f.default!s:<40} {f.description}")


if __name__ == "__main__":
    main()
