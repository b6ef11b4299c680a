"""What publish and deploy share about the Hub: the checked token, repo ids, failure reasons, staging folders.

    from training.hub.access import connect
    api = connect("you/bears", "you/bears-demo")   # StageError now, not after training, if the token is wrong

The token comes from HF_TOKEN or `hf auth login` (huggingface_hub.get_token). It is checked with whoami
before any long work, and never printed, logged or written anywhere: messages say where it came from only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, SpaceHardware, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from training.config import Config
from training.errors import StageError

log = logging.getLogger(__name__)

TOKEN_HELP = ("create a token with write access at https://huggingface.co/settings/tokens, then "
              "`export HF_TOKEN=<token>` or run `hf auth login`")
# What a failed Hub call raises: the Hub's HTTP errors, transport errors of httpx2 (huggingface_hub 2.x's
# client), and RuntimeError wrapping either from an LFS upload.
HUB_ERRORS = (HfHubHTTPError, httpx2.HTTPError, RuntimeError, OSError)


def connect(*repo_ids: str, endpoint: str | None = None) -> HfApi:
    """An HfApi holding the user's token, checked with whoami to be valid and able to write to each repo."""
    token = get_token()
    if not token:
        raise StageError(f"no Hugging Face token found (HF_TOKEN is unset and nobody is logged in); {TOKEN_HELP}")
    api = HfApi(endpoint=endpoint, token=token)
    me = _whoami(api)
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise StageError(f"the Hugging Face token from {_token_source()} is read-only, so it cannot upload; "
                         f"{TOKEN_HELP}")
    owners = [me["name"], *(org["name"] for org in me.get("orgs") or [])]
    for repo_id in repo_ids:
        if repo_id.split("/")[0] not in owners:
            raise StageError(f"{me['name']} cannot write to {repo_id}: its namespace is neither yours nor one of your "
                             f"organisations ({', '.join(owners)}); use e.g. {me['name']}/{repo_id.split('/')[-1]}")
    log.info("Hub %s: logged in as %s (token from %s)", api.endpoint, me["name"], _token_source())
    return api


def _whoami(api: HfApi) -> dict:
    try:
        return api.whoami()
    except HfHubHTTPError as exc:
        if status(exc) == 401:
            raise StageError(f"the Hub at {api.endpoint} refused the token from {_token_source()} (401 "
                             f"Unauthorized: mistyped, expired or revoked); {TOKEN_HELP}") from None
        raise StageError(f"could not check the token with the Hub at {api.endpoint}: {reason(exc)}; "
                         "check the network (or HF_ENDPOINT) and rerun") from None
    except (httpx2.HTTPError, OSError) as exc:
        raise StageError(f"could not reach the Hub at {api.endpoint} ({reason(exc)}); check the network "
                         "(or HF_ENDPOINT) and rerun") from None


def _token_source() -> str:
    # Where the token came from, never what it is.
    return "HF_TOKEN" if os.environ.get("HF_TOKEN") else "your saved login (hf auth login)"


def check_repo_id(repo_id: str | None, flag: str) -> str:
    """Return repo_id if it is a valid "namespace/name"; raise StageError naming the flag otherwise."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise StageError(f"{flag} {repo_id!r} is not a valid Hub repo id ({exc}); use NAMESPACE/NAME") from None
    if repo_id is None or repo_id.count("/") != 1:
        raise StageError(f"{flag} {repo_id!r} needs a namespace: use NAMESPACE/NAME, e.g. your-user/bears")
    return repo_id


def check_private(cfg: Config, repo_id: str, private: bool | None) -> None:
    """With --private, refuse to upload into a repo that exists and is public: the user expects nobody to see it."""
    if cfg.private and private is False:
        raise StageError(f"--private was given but {repo_id} already exists and is public (visibility is only set "
                         "when a repo is created); make it private in its Settings on the Hub, or use a new name, "
                         "then rerun")


def check_hardware(hardware: str | None) -> None:
    """Raise StageError unless hardware is None or a Space hardware the client knows."""
    known = [h.value for h in SpaceHardware]
    if hardware is not None and hardware not in known:
        raise StageError(f"--hardware {hardware!r} is not a Space hardware; use one of {', '.join(known)}")


def status(exc: Exception) -> int | None:
    """The HTTP status of a failed Hub call, None when there was no reply."""
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else None


def reason(exc: BaseException) -> str:
    """One line on why a Hub call failed: the status and the Hub's own message, or what broke underneath."""
    code = status(exc)  # type: ignore[arg-type]
    message = getattr(exc, "server_message", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    if code is not None:
        return f"{code} {message}"
    # An LFS upload wraps what really happened (a reset connection, an expired upload URL) in a RuntimeError.
    cause = exc.__cause__ or exc.__context__
    return f"{message} ({type(cause).__name__}: {reason(cause)})" if cause is not None else message


def fresh_folder(out: Path) -> Path:
    """out, created empty for a dry run; a folder that already holds files is refused, never cleared."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StageError(f"--out {out} already exists and is not an empty folder; a dry run writes exactly the files "
                         "it would upload, so give it a new folder (or delete that one)")
    out.mkdir(parents=True, exist_ok=True)
    return out
