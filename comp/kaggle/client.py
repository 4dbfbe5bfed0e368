"""Kaggle I/O: the one module that talks to Kaggle, through the official ``kaggle`` client.

Reads the Kaggle credentials (``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``,
``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``) and whatever the
API sends back. Writes only where a caller asks: downloaded competition archives
and kernel outputs, into a folder the caller owns.

``import kaggle`` authenticates at import time, so ``KaggleApi`` is imported
lazily, the first time a command needs Kaggle. Every call goes through
:meth:`Kaggle._call`, which retries rate limits (429), server errors (5xx),
timeouts and dropped connections with exponential backoff (honouring
``Retry-After``), and turns what is left into one-line :class:`KaggleError`
messages. No message ever contains a credential.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

from comp import files
from comp.errors import KaggleError, KaggleUncertain

log = logging.getLogger(__name__)

T = TypeVar("T")

# Statuses worth another try: rate limiting and the server's own failures.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# A call that is not idempotent (a submission, a kernel push) must not be repeated
# after the server may already have acted on it; only these statuses say it did not.
RETRY_STATUS_UNSAFE = frozenset({429, 503})
# However long the server asks us to wait, a person is waiting at the terminal.
MAX_RETRY_AFTER = 120.0
TOKEN_HELP = (
    "make an API token at https://www.kaggle.com/settings (API section) and put it in "
    "~/.kaggle/access_token or KAGGLE_API_TOKEN, or put username and key in ~/.kaggle/kaggle.json"
)


@dataclass(frozen=True)
class Credentials:
    kind: str  # "token", "key" (legacy username + key) or "oauth"
    source: str  # where they came from, for messages; never the secret itself
    username: str | None


def config_dir() -> Path:
    """Where the kaggle client keeps kaggle.json, resolved as the client resolves it."""
    env = os.environ.get("KAGGLE_CONFIG_DIR")
    if env:
        return Path(env)
    home = Path.home() / ".kaggle"
    if home.exists():
        return home
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "kaggle"


def _token_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def _kaggle_json() -> dict[str, Any]:
    try:
        data = json.loads((config_dir() / "kaggle.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_credentials() -> list[Credentials]:
    """The credentials the kaggle client can sign in with, in the order it tries them.

    Found without a network call and only to word messages: the client itself
    decides which ones work.
    """
    found = []
    env_user = os.environ.get("KAGGLE_USERNAME")
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and os.environ.get("KAGGLE_API_V1_TOKEN"):
        found.append(Credentials("token", "KAGGLE_API_V1_TOKEN", env_user))
    if os.environ.get("KAGGLE_API_TOKEN"):
        found.append(Credentials("token", "KAGGLE_API_TOKEN", env_user))
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if _token_file(path):
            found.append(Credentials("token", str(path), env_user))
            break
    # The client merges kaggle.json with KAGGLE_* variables, the variables winning.
    saved = _kaggle_json()
    username = env_user or saved.get("username")
    key = os.environ.get("KAGGLE_KEY") or saved.get("key")
    if username and key:
        where = [
            "KAGGLE_USERNAME" if env_user else None,
            "KAGGLE_KEY" if os.environ.get("KAGGLE_KEY") else None,
            str(config_dir() / "kaggle.json") if saved else None,
        ]
        found.append(Credentials("key", " + ".join(w for w in where if w), str(username)))
    if (Path.home() / ".kaggle" / "credentials.json").exists():
        found.append(Credentials("oauth", "~/.kaggle/credentials.json (kaggle auth login)", None))
    return found


def kaggle_json_problem(*, complete: bool = True) -> str | None:
    """What is wrong with kaggle.json, if it exists and cannot be used; never its contents.

    With ``complete=False``, only what stops the client from reading it at all.
    """
    path = config_dir() / "kaggle.json"
    shape = 'it should read {"username": "...", "key": "..."}'
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    try:
        data = json.loads(text)
    except ValueError:
        return f"{path} is not valid JSON; {shape}"
    if not isinstance(data, dict):
        return f"{path} is not a JSON object; {shape}"
    if complete and not (data.get("username") and data.get("key")):
        return f"{path} lacks a username or key; {shape}"
    return None


def loose_permissions() -> list[Path]:
    """Credential files that other users on this machine can read (the kaggle client warns too)."""
    candidates = [
        config_dir() / "kaggle.json",
        Path.home() / ".kaggle" / "access_token",
        Path.home() / ".kaggle" / "access_token.txt",
    ]
    loose = []
    for path in candidates:
        with contextlib.suppress(OSError):
            if os.name != "nt" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
                loose.append(path)
    return loose


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(e: BaseException) -> float | None:
    """The Retry-After header in seconds (a number or an HTTP date, at most MAX_RETRY_AFTER);
    None when it is missing or unreadable, and the caller backs off on its own."""
    # Not urllib3's Retry.parse_retry_after: it rejects "1.5" and "-5", yet takes "30 Feb" as a date.
    response = getattr(e, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    if value is None:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        delay = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, delay))


def _server_message(e: BaseException) -> str:
    response = getattr(e, "response", None)
    with contextlib.suppress(Exception):
        body = response.json()  # type: ignore[union-attr]
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return ""


def _never_sent(e: BaseException) -> bool:
    """True when the request cannot have reached the server: no connection was made."""
    import requests
    from urllib3.exceptions import NewConnectionError

    if isinstance(e, requests.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(e, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def _transient(e: BaseException, *, idempotent: bool) -> bool:
    import requests

    status = _status(e)
    if status is not None:
        return status in (RETRY_STATUS if idempotent else RETRY_STATUS_UNSAFE)
    if not idempotent:
        return _never_sent(e)
    return isinstance(e, (requests.Timeout, requests.ConnectionError))


def _ambiguous(e: BaseException) -> bool:
    """A failure after which the server may or may not have done what was asked."""
    import requests

    status = _status(e)
    if status is not None:
        return status >= 500 and status != 503
    return isinstance(e, (requests.Timeout, requests.ConnectionError)) and not _never_sent(e)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _make_api(timeout: float) -> Any:
    """A ``KaggleApi`` whose HTTP sessions time out instead of hanging forever."""
    from kaggle.api.kaggle_api_extended import KaggleApi
    from requests.adapters import HTTPAdapter

    class TimeoutAdapter(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    class Api(KaggleApi):
        def __init__(self) -> None:
            super().__init__()
            # KaggleApi resolves its config folder once, at import; resolve it now instead.
            self.config_dir = str(config_dir())
            self.config = os.path.join(self.config_dir, "kaggle.json")
            # So does it read KAGGLE_API_ENVIRONMENT (which server to talk to): read it now too,
            # or a process that imported the client earlier keeps talking to the old one.
            local = os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST"
            self.args = [a for a in KaggleApi.args if a != "--local"] + (
                ["--local"] if local else []
            )

        def build_kaggle_client(self) -> Any:
            client = super().build_kaggle_client()
            http = client.http_client()
            http._init_session()
            adapter = TimeoutAdapter()
            http._session.mount("http://", adapter)
            http._session.mount("https://", adapter)
            return client

    return Api()


class Kaggle:
    """The Kaggle API as ``comp`` uses it: authenticated lazily, retried, explained."""

    def __init__(
        self,
        *,
        tries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        self.tries = max(1, tries)
        self.backoff = backoff
        self.timeout = timeout
        self._api: Any = None
        self.credentials: Credentials | None = None
        self._found: list[Credentials] = []

    # --- connection -----------------------------------------------------------------------

    @property
    def api(self) -> Any:
        if self._api is None:
            found = find_credentials()
            for path in loose_permissions():
                log.warning(
                    f"{path} is readable by other users on this machine; run chmod 600 {path}"
                )
            out = io.StringIO()
            try:
                # The client prints its own help and calls exit(1) on bad credentials, and
                # `import kaggle` (the package around KaggleApi) signs in once on its own,
                # with no timeout of its own: hence the socket default around it.
                with (
                    contextlib.redirect_stdout(out),
                    contextlib.redirect_stderr(out),
                    _socket_timeout(self.timeout),
                ):
                    api = _make_api(self.timeout)
                    self._call("sign in", api.authenticate)
            except KaggleError as e:
                # The client reads kaggle.json itself and chokes on a malformed one.
                problem = kaggle_json_problem(complete=False)
                if problem:
                    raise KaggleError(f"{problem}; {TOKEN_HELP}") from None
                raise e from None
            except SystemExit:
                problem = kaggle_json_problem()
                if not found:
                    why = f" ({problem})" if problem else ""
                    raise KaggleError(f"no Kaggle credentials found{why}: {TOKEN_HELP}") from None
                sources = ", then ".join(c.source for c in found)
                raise KaggleError(
                    f"Kaggle rejected the credentials from {sources} (invalid or expired); {TOKEN_HELP}"
                ) from None
            method = str(api.config_values.get("auth_method", ""))
            kind = {"ACCESS_TOKEN": "token", "LEGACY_API_KEY": "key", "OAUTH": "oauth"}.get(method)
            self.credentials = next((c for c in found if c.kind == kind), None)
            self._found = found
            self._api = api
        return self._api

    def sign_in(self) -> None:
        """Authenticate now rather than at the first call."""
        self.api  # noqa: B018

    @property
    def username(self) -> str:
        name = self.api.config_values.get("username")
        if not name:
            raise KaggleError("Kaggle did not say which user these credentials belong to")
        return str(name)

    def _call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        idempotent: bool = True,
        hint: str = "",
        check: str = "",
        **kwargs: Any,
    ) -> T:
        """Run one API call with retries; re-raise whatever is left as a KaggleError."""
        for attempt in range(1, self.tries + 1):
            try:
                return fn(*args, **kwargs)
            except KaggleError:
                raise
            except SystemExit:
                raise
            except Exception as e:
                if _transient(e, idempotent=idempotent) and attempt < self.tries:
                    delay = _retry_after(e)
                    if delay is None:
                        delay = min(self.backoff * 2 ** (attempt - 1), 60.0) * random.uniform(
                            0.8, 1.2
                        )
                    reason = f"HTTP {_status(e)}" if _status(e) else type(e).__name__
                    log.warning(
                        f"Kaggle: {what} failed ({reason}); retry {attempt}/{self.tries - 1} in {delay:.1f}s"
                    )
                    time.sleep(delay)
                    continue
                error = self._explain(e, what, attempts=attempt, hint=hint)
                if not idempotent and _ambiguous(e):
                    raise KaggleUncertain(
                        f"{error}; Kaggle may have acted on it anyway: {check or 'check on kaggle.com'} before trying again"
                    ) from None
                raise error from None
        raise AssertionError("unreachable")

    def _explain(self, e: BaseException, what: str, *, attempts: int, hint: str) -> KaggleError:
        import requests

        status = _status(e)
        detail = _server_message(e)
        detail = f": {detail}" if detail else ""
        source = self.credentials.source if self.credentials else "your Kaggle settings"
        # The client can sign in with one set and send another (a stale KAGGLE_API_TOKEN
        # beside a good kaggle.json): name every set it may have used.
        others = [c.source for c in self._found if c != self.credentials]
        if others:
            source = f"{source}, or from {', '.join(others)}"
        tried = f" after {attempts} tries" if attempts > 1 else ""
        if status == 401:
            return KaggleError(
                f"Kaggle rejected the credentials from {source} (HTTP 401) during {what}; {TOKEN_HELP}"
            )
        if status == 403:
            return KaggleError(
                f"Kaggle refused {what} (HTTP 403){detail}{'; ' + hint if hint else ''}"
            )
        if status == 404:
            return KaggleError(
                f"{what}: not found on Kaggle (HTTP 404){detail}{'; ' + hint if hint else ''}"
            )
        if status == 429:
            return KaggleError(
                f"Kaggle is rate-limiting {what} (HTTP 429){tried}; wait a few minutes and run it again"
            )
        if status is not None and status >= 500:
            return KaggleError(
                f"Kaggle failed {what} (HTTP {status}){tried}{detail}; try again later"
            )
        if status is not None:
            return KaggleError(f"Kaggle refused {what} (HTTP {status}){detail}")
        if isinstance(e, requests.Timeout):
            return KaggleError(f"Kaggle did not answer {what} within {self.timeout:.0f}s{tried}")
        if isinstance(e, requests.ConnectionError):
            return KaggleError(f"could not reach Kaggle for {what}{tried}: check the network")
        # The client reports bad input (a wrong slug, a bad metadata file) as ValueError.
        return KaggleError(f"{what}: {e}")

    # --- competitions ---------------------------------------------------------------------

    def submission_limits(self, competition: str) -> dict[str, Any] | None:
        """Today's submission counts, or None where the API does not give them."""
        try:
            limits = self._call(
                "reading the submission quota",
                self.api.competition_get_submission_limits,
                competition,
            )
        except KaggleError:
            return None
        return {
            "today": int(limits.num_today),
            "total": int(limits.num_total),
            "left_today": int(limits.num_allowed_now),
            "limited_by_total": bool(limits.limited_by_total),
        }

    def submit(self, file: Path, *, competition: str, message: str) -> int:
        """Upload a submission file; return Kaggle's submission ref."""
        from kaggle.api.kaggle_api_extended import KaggleApi

        result = self._call(
            f"submitting {file.name} to {competition}",
            self.api.competition_submit,
            str(file),
            message,
            competition,
            quiet=True,
            idempotent=False,
            check="see `comp submissions --refresh`",
            hint=f"have you joined the competition and accepted its rules at https://www.kaggle.com/competitions/{competition}/rules?",
        )
        if result.message == KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
            raise KaggleError(f"uploading {file.name} to Kaggle failed; nothing was submitted")
        return int(result.ref)

    def submissions(self, competition: str, *, page_size: int = 100) -> list[dict[str, Any]]:
        """Every submission of the team in ``competition``, newest first, all pages."""
        from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

        def page(token: str) -> Any:
            request = ApiListSubmissionsRequest()
            request.competition_name = competition
            request.page_size = page_size
            request.page_token = token
            with self.api.build_kaggle_client() as client:
                return client.competitions.competition_api_client.list_submissions(request)

        rows: list[dict[str, Any]] = []
        token = ""
        for _ in range(1000):
            response = self._call(f"listing submissions of {competition}", page, token)
            for s in response.submissions or []:
                rows.append(
                    {
                        "ref": str(s.ref),
                        "date": s.date.isoformat() if s.date else None,
                        "file_name": s.file_name,
                        "description": s.description or "",
                        "status": s.status.name.lower(),
                        "public": _score(s.public_score),
                        "private": _score(s.private_score),
                        "error": s.error_description or None,
                    }
                )
            token = response.next_page_token or ""
            if not token or not response.submissions:
                break
        return rows

    def download(self, competition: str, dest: Path) -> Path:
        """Download the competition's files as one archive into ``dest``; return its path."""
        dest.mkdir(parents=True, exist_ok=True)
        self._call(
            f"downloading {competition}",
            self.api.competition_download_files,
            competition,
            path=str(dest),
            force=True,
            quiet=False,
            hint=f"have you joined the competition and accepted its rules at https://www.kaggle.com/competitions/{competition}/rules?",
        )
        archives = sorted(dest.glob(f"{competition}.*"))
        if not archives:
            raise KaggleError(f"downloading {competition}: Kaggle sent no archive")
        return archives[0]

    # --- kernels --------------------------------------------------------------------------

    def push_kernel(self, folder: Path) -> dict[str, Any]:
        response = self._call(
            f"pushing kernel {folder.name}",
            self.api.kernels_push,
            str(folder),
            idempotent=False,
            check="see `comp kernel status`",
        )
        if response.error:
            raise KaggleError(f"Kaggle refused kernel {folder.name}: {response.error}")
        invalid = [
            *response.invalid_dataset_sources,
            *response.invalid_competition_sources,
            *response.invalid_kernel_sources,
            *response.invalid_model_sources,
        ]
        if invalid:
            raise KaggleError(
                f"Kaggle refused kernel {folder.name}: unknown or inaccessible source(s) {', '.join(invalid)}"
            )
        return {"ref": response.ref, "url": response.url, "version": response.version_number}

    def kernel_status(self, ref: str) -> tuple[str, str | None]:
        response = self._call(f"reading the status of {ref}", self.api.kernels_status, ref)
        return response.status.name.lower(), response.failure_message or None

    def kernel_log(self, ref: str) -> str | None:
        """Kernel ``ref``'s log as Kaggle has it now (None where it has none), nothing downloaded."""
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        owner, _, slug = ref.partition("/")

        def first_page() -> Any:
            request = ApiListKernelSessionOutputRequest()
            request.user_name = owner
            request.kernel_slug = slug
            request.page_size = 1
            with self.api.build_kaggle_client() as client:
                return client.kernels.kernels_api_client.list_kernel_session_output(request)

        response = self._call(f"reading the log of {ref}", first_page)
        return str(response.log) if response.log else None

    def kernel_output(self, ref: str, dest: Path) -> list[Path]:
        """Download every output file of kernel ``ref`` (and its log) into ``dest``.

        Done here rather than with the client's kernels_output, which fetches without
        a timeout and saves an error page as if it were the file.
        """
        import requests
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        owner, _, slug = ref.partition("/")

        def page(token: str) -> Any:
            request = ApiListKernelSessionOutputRequest()
            request.user_name = owner
            request.kernel_slug = slug
            request.page_size = 100
            request.page_token = token
            with self.api.build_kaggle_client() as client:
                return client.kernels.kernels_api_client.list_kernel_session_output(request)

        def fetch(url: str, target: Path) -> None:
            with requests.get(url, stream=True, timeout=self.timeout) as response:
                response.raise_for_status()
                with files.atomic_open(target, "wb") as f:
                    for chunk in response.iter_content(1 << 20):
                        f.write(chunk)

        root = dest.resolve()
        written: list[Path] = []
        token = ""
        for number in range(10_000):
            response = self._call(f"listing the output of {ref}", page, token)
            if number == 0 and response.log:
                files.write_text(dest / f"{slug}.log", response.log)
                written.append(dest / f"{slug}.log")
            for item in response.files or []:
                target = dest / item.file_name
                if not target.resolve().is_relative_to(root):
                    raise KaggleError(
                        f"{ref}: output file '{item.file_name}' points outside {dest}"
                    )
                self._call(f"downloading {item.file_name} of {ref}", fetch, item.url, target)
                written.append(target)
            token = response.next_page_token or ""
            if not token:
                break
        return written

    # --- datasets -------------------------------------------------------------------------

    def dataset_exists(self, ref: str) -> bool:
        import requests

        try:
            self.api.dataset_status(ref)
        except requests.HTTPError as e:
            if _status(e) == 404:
                return False
            raise self._explain(e, f"reading dataset {ref}", attempts=1, hint="") from None
        return True

    def create_dataset(self, folder: Path, *, public: bool = False) -> str:
        response = self._call(
            f"creating dataset from {folder}",
            self.api.dataset_create_new,
            str(folder),
            public=public,
            quiet=True,
            dir_mode="zip",
            idempotent=False,
        )
        if response.error:
            raise KaggleError(f"Kaggle refused the dataset: {response.error}")
        return str(response.url or response.ref)

    def version_dataset(self, folder: Path, *, notes: str) -> str:
        response = self._call(
            f"versioning dataset from {folder}",
            self.api.dataset_create_version,
            str(folder),
            notes,
            quiet=True,
            dir_mode="zip",
            idempotent=False,
        )
        if response.error:
            raise KaggleError(f"Kaggle refused the dataset version: {response.error}")
        return str(response.url or response.ref)


def _score(value: str | None) -> float | None:
    if value is None or not re.fullmatch(r"\s*-?\d+(\.\d*)?([eE]-?\d+)?\s*", str(value)):
        return None
    return float(value)
