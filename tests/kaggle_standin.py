"""A stand-in for Kaggle's API on loopback, for tests that run the real ``kaggle`` client.

The client sends its JSON RPCs to ``http://localhost/api/v1/<service>/<method>``
when ``KAGGLE_API_ENVIRONMENT=LOCALHOST``; ``HTTP_PROXY`` points ``requests`` at
this server, which therefore sees proxy-style requests with absolute URLs.
Requests are parsed and responses built with kagglesdk's own request and
response types, so the JSON on the wire is what the client expects from Kaggle.

It keeps competitions (files, a solution that scores submissions into public
and private macro-F1, a daily limit), kernels (pushed scripts, a status that
moves QUEUED -> RUNNING -> COMPLETE, output files) and datasets, and can be told
to fail the next calls of an RPC with a status code, to test retries.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
from kagglesdk.blobs.types.blob_api_service import (
    ApiStartBlobUploadRequest,
    ApiStartBlobUploadResponse,
)
from kagglesdk.competitions.types.competition_api_service import (
    ApiCreateSubmissionRequest,
    ApiCreateSubmissionResponse,
    ApiDownloadDataFilesRequest,
    ApiGetSubmissionLimitsRequest,
    ApiListSubmissionsRequest,
    ApiListSubmissionsResponse,
    ApiStartSubmissionUploadRequest,
    ApiStartSubmissionUploadResponse,
    ApiSubmission,
    ApiSubmissionLimits,
)
from kagglesdk.competitions.types.submission_status import SubmissionStatus
from kagglesdk.datasets.types.dataset_api_service import (
    ApiCreateDatasetRequest,
    ApiCreateDatasetResponse,
    ApiCreateDatasetVersionRequest,
    ApiGetDatasetStatusRequest,
    ApiGetDatasetStatusResponse,
)
from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus
from kagglesdk.kernels.types.kernels_api_service import (
    ApiGetKernelSessionStatusRequest,
    ApiGetKernelSessionStatusResponse,
    ApiKernelSessionOutputFile,
    ApiListKernelSessionOutputRequest,
    ApiListKernelSessionOutputResponse,
    ApiSaveKernelRequest,
    ApiSaveKernelResponse,
)
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus
from kagglesdk.security.types.oauth_service import IntrospectTokenRequest, IntrospectTokenResponse
from sklearn.metrics import f1_score

GOOD_TOKEN = "KGAT_standin_0123456789abcdef"
USERNAME = "tester"


class RpcError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Competition:
    files: dict[str, bytes]
    solution: pd.DataFrame | None = None
    daily_limit: int = 5
    ended: bool = False
    submissions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Kernel:
    request: dict[str, Any]
    version: int = 1
    polls: int = 0
    status: str = "QUEUED"
    failure: str | None = None
    outputs: dict[str, bytes] = field(default_factory=dict)
    log: str = ""


# Runs a pushed kernel: given the kernel's save request (text, sources...), return
# (outputs as relative path -> bytes, log, failure message or None).
Runner = Callable[[dict[str, Any]], tuple[dict[str, bytes], str, str | None]]


class KaggleStandIn:
    def __init__(self, *, runner: Runner | None = None) -> None:
        self.tokens = {GOOD_TOKEN: USERNAME}
        self.keys = {USERNAME: "standin-legacy-key"}
        self.competitions: dict[str, Competition] = {}
        self.kernels: dict[str, Kernel] = {}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.faults: list[tuple[str, int, dict[str, str]]] = []
        self.delays: list[tuple[str, float]] = []
        self.drops: list[str] = []
        self.blob_names: dict[str, str] = {}
        self.runner = runner
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # --- lifecycle and set-up -------------------------------------------------------------

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """Environment that sends the kaggle client here."""
        return {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": self.proxy,
            "http_proxy": self.proxy,
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def __enter__(self) -> KaggleStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_competition(self, slug: str, folder: Path, *, daily_limit: int = 5) -> Competition:
        """Serve ``folder`` as the competition's files; its solution.csv scores submissions."""
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "solution.csv"
        }
        solution = folder / "solution.csv"
        comp = Competition(
            files=files,
            solution=pd.read_csv(solution, dtype=str) if solution.exists() else None,
            daily_limit=daily_limit,
        )
        self.competitions[slug] = comp
        return comp

    def drop(self, rpc: str) -> None:
        """Carry out the next call of ``rpc``, then hang up without answering (a lost reply)."""
        self.drops.append(rpc)

    def slow(self, rpc: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``rpc`` only after ``seconds``, to test timeouts."""
        self.delays += [(rpc, seconds)] * times

    def fail(self, rpc: str, status: int, *, times: int = 1, retry_after: str | None = "0") -> None:
        """Answer the next ``times`` calls of ``rpc`` (e.g. "ListSubmissions", or "*") with ``status``."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.faults += [(rpc, status, headers)] * times

    # --- RPCs -----------------------------------------------------------------------------

    def rpc(self, method: str, body: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
        delay = 0.0
        with self.lock:
            self.calls.append(method)
            for i, (rpc, seconds) in enumerate(self.delays):
                if rpc in (method, "*"):
                    del self.delays[i]
                    delay = seconds
                    break
        time.sleep(delay)
        with self.lock:
            for i, (rpc, status, headers) in enumerate(self.faults):
                if rpc in (method, "*"):
                    del self.faults[i]
                    raise RpcError(status, f"stand-in fault {status}", headers)
        if method == "IntrospectToken":
            req = IntrospectTokenRequest.from_json(body)
            resp = IntrospectTokenResponse()
            user = self.tokens.get(req.token)
            resp.active = user is not None
            resp.username = user or ""
            return _json(resp)
        user = self._user(auth)
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            raise RpcError(404, f"stand-in has no RPC {method}")
        return handler(body, user)

    def _user(self, auth: str | None) -> str:
        if auth and auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return self.tokens[auth[7:]]
        if auth and auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            if self.keys.get(user) == key:
                return user
        raise RpcError(401, "Unauthenticated")

    def _competition(self, slug: str) -> Competition:
        if slug not in self.competitions:
            raise RpcError(404, f"Competition '{slug}' not found")
        return self.competitions[slug]

    def _GetSubmissionLimits(self, body: str, user: str) -> Any:
        comp = self._competition(ApiGetSubmissionLimitsRequest.from_json(body).competition_name)
        resp = ApiSubmissionLimits()
        resp.num_today = len(comp.submissions)
        resp.num_total = len(comp.submissions)
        resp.num_allowed_now = max(0, comp.daily_limit - len(comp.submissions))
        return _json(resp)

    def _StartSubmissionUpload(self, body: str, user: str) -> Any:
        req = ApiStartSubmissionUploadRequest.from_json(body)
        self._competition(req.competition_name)
        token = uuid.uuid4().hex
        self.blobs[token] = b""
        resp = ApiStartSubmissionUploadResponse()
        resp.token = token
        resp.create_url = f"http://localhost/upload/{token}"
        return _json(resp)

    def _CreateSubmission(self, body: str, user: str) -> Any:
        req = ApiCreateSubmissionRequest.from_json(body)
        comp = self._competition(req.competition_name)
        if len(comp.submissions) >= comp.daily_limit:
            raise RpcError(400, "Submission limit reached for today")
        data = self.blobs.get(req.blob_file_tokens)
        if not data:
            raise RpcError(400, "No uploaded file for this token")
        ref = 50_000_000 + len(self.blobs) * 7 + len(comp.submissions)
        comp.submissions.insert(
            0,
            {
                "ref": ref,
                "date": datetime.now(),
                "description": req.submission_description,
                "file": data,
                "polls": 0,
                "submitted_by": user,
            },
        )
        resp = ApiCreateSubmissionResponse()
        resp.ref = ref
        resp.message = "Successfully submitted to Stand-in Competition"
        return _json(resp)

    def _ListSubmissions(self, body: str, user: str) -> Any:
        req = ApiListSubmissionsRequest.from_json(body)
        comp = self._competition(req.competition_name)
        start = int(req.page_token or 0)
        size = req.page_size or 20
        page = comp.submissions[start : start + size]
        resp = ApiListSubmissionsResponse()
        out = []
        for s in page:
            s["polls"] += 1
            sub = ApiSubmission()
            sub.ref = s["ref"]
            sub.date = s["date"]
            sub.description = s["description"]
            sub.file_name = "submission.csv"
            sub.submitted_by = s["submitted_by"]
            # Scoring takes a moment on Kaggle: PENDING on the first look, scored after.
            if s["polls"] > 1:
                scored = self._score(comp, s["file"])
                if isinstance(scored, str):
                    sub.status = SubmissionStatus.ERROR
                    sub.error_description = scored
                else:
                    sub.status = SubmissionStatus.COMPLETE
                    sub.public_score = f"{scored['Public']:.5f}"
                    if comp.ended:
                        sub.private_score = f"{scored['Private']:.5f}"
            out.append(sub)
        resp.submissions = out
        resp.next_page_token = str(start + size) if start + size < len(comp.submissions) else ""
        return _json(resp)

    @staticmethod
    def _score(comp: Competition, data: bytes) -> dict[str, float] | str:
        if comp.solution is None:
            return {"Public": 0.0, "Private": 0.0}
        sub = pd.read_csv(io.BytesIO(data), dtype=str)
        sol = comp.solution
        merged = sol.merge(sub, on=sol.columns[0], how="left", suffixes=("", "_pred"))
        pred = merged[f"{sol.columns[1]}_pred"]
        if pred.isna().any():
            return "Submission is missing rows"
        return {
            usage: float(
                f1_score(
                    merged.loc[merged["Usage"] == usage, sol.columns[1]],
                    pred[merged["Usage"] == usage],
                    average="macro",
                )
            )
            for usage in ("Public", "Private")
        }

    def _DownloadDataFiles(self, body: str, user: str) -> Any:
        slug = ApiDownloadDataFilesRequest.from_json(body).competition_name
        self._competition(slug)
        # Kaggle answers with a redirect to a signed storage URL.
        return 302, {"Location": f"http://localhost/files/{slug}.zip"}, b""

    def competition_zip(self, slug: str) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in self._competition(slug).files.items():
                z.writestr(name, data)
        return buf.getvalue()

    def _SaveKernel(self, body: str, user: str) -> Any:
        req = ApiSaveKernelRequest.from_json(body)
        owner, _, slug = (req.slug or "").partition("/")
        if owner != user:
            raise RpcError(403, f"Cannot push to {req.slug} as {user}")
        resp = ApiSaveKernelResponse()
        missing = [c for c in req.competition_data_sources if c not in self.competitions]
        missing_ds = [d for d in req.dataset_data_sources if d not in self.datasets]
        resp.invalid_competition_sources = missing
        resp.invalid_dataset_sources = missing_ds
        if missing or missing_ds:
            return _json(resp)
        ref = f"{owner}/{slug}"
        previous = self.kernels.get(ref)
        kernel = Kernel(request=req.to_dict(), version=previous.version + 1 if previous else 1)
        self.kernels[ref] = kernel
        if self.runner is not None:
            kernel.status = "RUNNING"
            threading.Thread(target=self._run, args=(kernel,), daemon=True).start()
        resp.ref = f"/code/{ref}"
        resp.url = f"https://www.kaggle.com/code/{ref}"
        resp.version_number = kernel.version
        return _json(resp)

    def _run(self, kernel: Kernel) -> None:
        assert self.runner is not None
        try:
            outputs, log, failure = self.runner(kernel.request)
        except Exception as e:  # a broken runner is a failed kernel, not a hung test
            outputs, log, failure = {}, repr(e), repr(e)
        kernel.outputs, kernel.log, kernel.failure = outputs, log, failure
        kernel.status = "ERROR" if failure else "COMPLETE"

    def _kernel(self, owner: str, slug: str) -> Kernel:
        ref = f"{owner}/{slug}"
        if ref not in self.kernels:
            raise RpcError(404, f"Kernel {ref} not found")
        return self.kernels[ref]

    def _GetKernelSessionStatus(self, body: str, user: str) -> Any:
        req = ApiGetKernelSessionStatusRequest.from_json(body)
        kernel = self._kernel(req.user_name, req.kernel_slug)
        if self.runner is None:
            kernel.polls += 1
            kernel.status = (
                ["QUEUED", "RUNNING"][kernel.polls - 1] if kernel.polls < 3 else "COMPLETE"
            )
        resp = ApiGetKernelSessionStatusResponse()
        resp.status = KernelWorkerStatus[kernel.status]
        resp.failure_message = kernel.failure
        return _json(resp)

    def _ListKernelSessionOutput(self, body: str, user: str) -> Any:
        req = ApiListKernelSessionOutputRequest.from_json(body)
        kernel = self._kernel(req.user_name, req.kernel_slug)
        names = sorted(kernel.outputs)
        start = int(req.page_token or 0)
        size = req.page_size or 20
        resp = ApiListKernelSessionOutputResponse()
        files = []
        for name in names[start : start + size]:
            f = ApiKernelSessionOutputFile()
            f.file_name = name
            f.url = f"http://localhost/outputs/{req.user_name}/{req.kernel_slug}/{name}"
            files.append(f)
        resp.files = files
        resp.log = kernel.log if start == 0 else None
        resp.next_page_token = str(start + size) if start + size < len(names) else None
        return _json(resp)

    def _GetDatasetStatus(self, body: str, user: str) -> Any:
        req = ApiGetDatasetStatusRequest.from_json(body)
        if f"{req.owner_slug}/{req.dataset_slug}" not in self.datasets:
            raise RpcError(404, "Dataset not found")
        resp = ApiGetDatasetStatusResponse()
        resp.status = DatabundleVersionStatus.READY
        return _json(resp)

    def _StartBlobUpload(self, body: str, user: str) -> Any:
        req = ApiStartBlobUploadRequest.from_json(body)
        token = uuid.uuid4().hex
        self.blobs[token] = b""
        self.blob_names[token] = req.name
        resp = ApiStartBlobUploadResponse()
        resp.token = token
        resp.create_url = f"http://localhost/upload/{token}"
        return _json(resp)

    def _dataset_files(self, files: list[Any]) -> dict[str, bytes]:
        return {self.blob_names[f.token]: self.blobs[f.token] for f in files}

    def _CreateDataset(self, body: str, user: str) -> Any:
        req = ApiCreateDatasetRequest.from_json(body)
        ref = f"{req.owner_slug}/{req.slug}"
        self.datasets[ref] = {"versions": [self._dataset_files(req.files)], "title": req.title}
        resp = ApiCreateDatasetResponse()
        resp.ref = ref
        resp.url = f"https://www.kaggle.com/datasets/{ref}"
        resp.status = "Ok"
        return _json(resp)

    def _CreateDatasetVersion(self, body: str, user: str) -> Any:
        req = ApiCreateDatasetVersionRequest.from_json(body)
        ref = f"{req.owner_slug}/{req.dataset_slug}"
        if ref not in self.datasets:
            raise RpcError(404, "Dataset not found")
        self.datasets[ref]["versions"].append(self._dataset_files(req.body.files))
        resp = ApiCreateDatasetResponse()
        resp.ref = ref
        resp.url = f"https://www.kaggle.com/datasets/{ref}"
        resp.status = "Ok"
        return _json(resp)

    def rpc_fault(self, name: str) -> None:
        with self.lock:
            for i, (rpc, status, headers) in enumerate(self.faults):
                if rpc == name:
                    del self.faults[i]
                    raise RpcError(status, f"stand-in fault {status}", headers)

    # --- plain HTTP: uploads and downloads --------------------------------------------------

    def upload(self, token: str, data: bytes) -> None:
        if token not in self.blobs:
            raise RpcError(404, "unknown upload")
        self.blobs[token] = data

    def download(self, path: str) -> bytes:
        parts = path.strip("/").split("/")
        if parts[0] == "files" and parts[1].endswith(".zip"):
            return self.competition_zip(parts[1][: -len(".zip")])
        if parts[0] == "outputs":
            kernel = self._kernel(parts[1], parts[2])
            name = "/".join(parts[3:])
            if name in kernel.outputs:
                return kernel.outputs[name]
        raise RpcError(404, f"no file {path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up waiting (a timeout test) is not the server's error.
        pass


def _json(obj: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, obj.to_json().encode()


def _handler(standin: KaggleStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                return b"".join(self._chunks())
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _chunks(self) -> Iterator[bytes]:
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, e: RpcError) -> None:
            body = json.dumps({"code": e.status, "message": e.message}).encode()
            self._send(e.status, {"Content-Type": "application/json", **e.headers}, body)

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._body().decode() or "{}"
            try:
                if not path.startswith("/api/v1/"):
                    raise RpcError(404, f"no route {path}")
                method = path.rsplit("/", 1)[-1]
                answer = standin.rpc(method, body, self.headers.get("Authorization"))
                if method in standin.drops:
                    standin.drops.remove(method)
                    self.close_connection = True
                    return
                self._send(*answer)
            except RpcError as e:
                self._error(e)

        def do_PUT(self) -> None:
            path = urlsplit(self.path).path
            data = self._body()
            try:
                standin.upload(path.rsplit("/", 1)[-1], data)
                self._send(200, {}, b"")
            except RpcError as e:
                self._error(e)

        def do_GET(self) -> None:
            try:
                standin.rpc_fault("GET")
                data = standin.download(urlsplit(self.path).path)
                self._send(200, {"Content-Type": "application/octet-stream"}, data)
            except RpcError as e:
                self._error(e)

    return Handler


def script_runner(standin: KaggleStandIn, workdir: Path) -> Runner:
    """Run a pushed script as Kaggle would: competition and datasets mounted under an input
    folder (zips unpacked), no credentials, outputs taken from the working folder."""
    import os
    import subprocess
    import sys

    def run(request: dict[str, Any]) -> tuple[dict[str, bytes], str, str | None]:
        base = workdir / request["slug"].replace("/", "__") / f"v{len(list(workdir.glob('*')))}"
        inp, working = base / "input", base / "working"
        for slug in request.get("competitionDataSources", []):
            for name, data in standin.competitions[slug].files.items():
                (inp / slug / name).parent.mkdir(parents=True, exist_ok=True)
                (inp / slug / name).write_bytes(data)
        for ref in request.get("datasetDataSources", []):
            folder = inp / ref.split("/")[-1]
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in standin.datasets[ref]["versions"][-1].items():
                if name.endswith(".zip"):  # Kaggle unpacks uploaded archives
                    zipfile.ZipFile(io.BytesIO(data)).extractall(folder / name[: -len(".zip")])
                else:
                    (folder / name).write_bytes(data)
        script = base / "script.py"
        script.write_text(request["text"])
        working.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("KAGGLE_", "HTTP"))}
        env.update(
            # Kernels run side by side here; one thread each keeps 2 cores from thrashing.
            OMP_NUM_THREADS="1",
            COMP_KAGGLE_INPUT=str(inp),
            COMP_KAGGLE_WORKING=str(working),
            COMP_KAGGLE_CODE=str(base / "code"),
            COMP_KAGGLE_TEMP=str(base / "temp"),
            KAGGLE_KERNEL_RUN_TYPE="Batch",
        )
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, cwd=working
        )
        outputs = {
            p.relative_to(working).as_posix(): p.read_bytes()
            for p in working.rglob("*")
            if p.is_file()
        }
        log = proc.stdout + proc.stderr
        return (
            outputs,
            log,
            None if proc.returncode == 0 else f"exit {proc.returncode}: {log[-500:]}",
        )

    return run


def main() -> None:
    """Serve competitions by hand: python -m tests.kaggle_standin SLUG=FOLDER [...]"""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("competitions", nargs="+", metavar="SLUG=FOLDER")
    parser.add_argument("--ended", action="store_true", help="show private scores too")
    args = parser.parse_args()
    with KaggleStandIn() as server:
        server.runner = script_runner(server, Path(tempfile.mkdtemp(prefix="kaggle-machines-")))
        for spec in args.competitions:
            slug, _, folder = spec.partition("=")
            server.add_competition(slug, Path(folder)).ended = args.ended
        for k, v in server.env().items():
            print(f"export {k}={v}")
        print(f"export KAGGLE_API_TOKEN={GOOD_TOKEN}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
