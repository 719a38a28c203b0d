"""The Hugging Face Hub side of capsat: telling hub ids from local paths, and pushing / pulling
saved routers (``capsat push`` / ``capsat pull``). Nothing here downloads at import or
without being asked; an unreachable hub is a one-line error, never a long stack."""
from __future__ import annotations

import re
from pathlib import Path

from data_builders.errors import DataError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_a_path(spec: str) -> bool:
    """Whether ``spec`` names a local folder rather than a hub id (owner/name): then a missing
    folder is reported at once, never looked up on the hub."""
    spec = str(spec)
    if spec.startswith((".", "/", "~")) or spec.endswith("/") or "\\" in spec:
        return True
    if not HUB_ID.match(spec):
        return "/" in spec
    return Path(spec.split("/", 1)[0]).is_dir()  # "runs/knn" where ./runs exists


def check_local(spec: str) -> None:
    """Raise "no such folder" for a path-like ``spec`` that does not exist."""
    if not Path(spec).is_dir() and looks_like_a_path(spec):
        raise DataError("no such router folder", file=str(spec))


def hub_error(action: str, repo_id: str, err: Exception) -> DataError:
    """A one-line error for a failed hub call, saying what to do offline."""
    return DataError(f"could not {action} {repo_id!r} on the Hugging Face Hub "
                     f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                     f"check the network, HF_ENDPOINT and HF_TOKEN, or copy the folder by hand",
                     field="repo_id")


def push(router_dir: str, repo_id: str, *, private: bool = False, token: str | None = None
         ) -> str:
    """Upload a saved router folder (any kind) to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi

    from .routers.base import ROUTER_FILE

    folder = Path(router_dir)
    check_local(router_dir)
    if not (folder / ROUTER_FILE).exists():
        raise DataError(f"not a saved router (no {ROUTER_FILE})", file=str(folder))
    if not HUB_ID.match(repo_id):
        raise DataError(f"a hub repo id is owner/name, got {repo_id!r}", field="repo_id")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                   commit_message="Upload capsat router")
    except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
        raise hub_error("push to", repo_id, err) from err
    return str(getattr(commit, "commit_url", commit))


def pull(repo_id: str, out_dir: str, *, revision: str | None = None,
         token: str | None = None) -> Path:
    """Download ``repo_id`` into ``out_dir`` and check that it is a saved router."""
    from huggingface_hub import snapshot_download

    from data_builders.atomic import atomic_folder

    from .routers.base import ROUTER_FILE

    if not HUB_ID.match(repo_id):
        raise DataError(f"a hub repo id is owner/name, got {repo_id!r}", field="repo_id")
    target = Path(out_dir)
    with atomic_folder(target) as tmp:
        try:
            snapshot_download(repo_id, revision=revision, local_dir=str(tmp), token=token)
        except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
            raise hub_error("download", repo_id, err) from err
        if not (tmp / ROUTER_FILE).exists():
            raise DataError(f"{repo_id} holds no saved router (no {ROUTER_FILE})",
                            field="repo_id")
    return target
