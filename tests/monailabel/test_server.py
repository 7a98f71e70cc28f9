"""End to end: the dycon_isles bundle served by a real MONAI Label 0.8.5 server (separate venv), over HTTP.

The server runs from the MONAI Label environment made by ``make monailabel-env`` (default ``.venv-monailabel`` in
the repository, or ``$MONAILABEL_VENV``). Without that environment the test is skipped, unless
``DYCON_REQUIRE_MONAILABEL=1`` is set (CI), in which case it fails. ``DYCON_MONAILABEL_BUNDLE=DIR`` serves another
bundle folder instead of ``bundles/dycon_isles``.

What it checks, on loopback with bounded waits, logs printed on failure:
- ``GET /info/`` lists the model with the labels of the bundle's ``channel_def``, the trainer, and the
  ``dycon_entropy`` scoring method and strategy;
- ``POST /infer/dycon_isles?image=ID&output=image`` returns a NIfTI segmentation with the study's shape and affine;
- ``POST /scoring/dycon_entropy`` scores every unlabeled study, with the same numbers as this environment computes
  from the bundle's own pre-processing, inferer and weights; ``POST /activelearning/dycon_entropy`` returns the most
  uncertain one, then the next one once it is labeled;
- labels saved through ``PUT /datastore/label`` feed a one-epoch ``POST /train/dycon_isles`` that completes and
  publishes new weights the server then serves; a second run also gets the unlabeled studies (DyCON's unlabeled
  stream) from the datastore.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
BUNDLE = Path(os.environ.get("DYCON_MONAILABEL_BUNDLE", REPO / "bundles" / "dycon_isles"))
MODEL = "dycon_isles"
STRATEGY = "dycon_entropy"
READY_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 420
N_STUDIES = 5
N_LABELED = 2

pytestmark = pytest.mark.slow


def _require() -> bool:
    return os.environ.get("DYCON_REQUIRE_MONAILABEL", "").strip().lower() not in ("", "0", "false", "no")


def _venv_or_skip() -> Path:
    launcher = VENV / "bin" / "monailabel"
    python = VENV / "bin" / "python"
    if launcher.is_file() and python.is_file():
        return VENV
    msg = (
        f"no MONAI Label environment at {VENV} (expected {launcher}); create it with `make monailabel-env` "
        "(a few minutes, about 8 GB) or point MONAILABEL_VENV at one"
    )
    if _require():
        pytest.fail(f"DYCON_REQUIRE_MONAILABEL is set but {msg}")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``monailabel start_server`` process on 127.0.0.1 with its log in a file."""

    def __init__(self, venv: Path, app: Path, studies: Path, log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(
            {
                "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "VIRTUAL_ENV": str(venv),
                "MONAILABEL_PYEXE": str(venv / "bin" / "python"),
                # take the bundle in <app>/model/<name> as local: no model-zoo lookup (offline)
                "BUNDLE_DOWNLOAD_SRC": "github",
                # scoring runs when the test asks for it, not in the background at start-up
                "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
                "CUDA_VISIBLE_DEVICES": "",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        cmd = [
            str(venv / "bin" / "monailabel"),
            "start_server",
            "--app",
            str(app),
            "--studies",
            str(studies),
            "--conf",
            "models",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self._log_fh = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, cwd=str(app), env=env, stdout=self._log_fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, chars: int = 12000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"
        return text[-chars:]

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}\n----- MONAI Label server log (tail) -----\n{self.log_tail()}", pytrace=False)

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float = 300.0,
    ) -> tuple[int, bytes, dict[str, str]]:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})

    def json(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        status, data, _ = self.request(method, path, **kw)
        if status != expect:
            self.fail(f"{method} {path} answered {status} (expected {expect}): {data[:2000]!r}")
        return json.loads(data) if data else None

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"MONAI Label server exited with code {self.proc.returncode} before it was ready")
            try:
                status, data, _ = self.request("GET", "/info/", timeout=10)
                if status == 200:
                    return json.loads(data)
                last = f"HTTP {status}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = repr(e)
            time.sleep(2)
        self.fail(f"MONAI Label server not ready after {timeout:.0f} s (last answer: {last})")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=30)
        self._log_fh.close()


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(content)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _bundle_parser():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    return parser


# A one-epoch /train in seconds: same network_def (so models/model.pt keeps loading), two iterations, small patches,
# no caching or worker processes. Top-level keys of train.json, applied to the app's copy of the bundle only.
TINY_TRAINING = {
    "max_iterations": 2,
    "epoch_iterations": 2,
    "batch_size": 2,
    "patch_size": [32, 32, 32],
    "fecl_grid_size": 4,
    "fecl_top_k": 4,
    "embedding_dim": 16,
    "num_workers": 0,
    "cache_rate": 0.0,
    "sw_batch_size": 1,
    "sw_overlap": 0.25,
    "progress_bar": False,
    "checkpoint_interval": 2,
}


def _shrink_training(bundle: Path) -> None:
    """Rewrite <bundle>/configs/train.json with TINY_TRAINING (MONAI Label's BundleTrainTask reads that one file)."""
    from monai.bundle import ConfigParser

    path = bundle / "configs" / "train.json"
    if not path.is_file():
        return
    parser = ConfigParser()
    parser.read_config(str(path))
    for key, value in TINY_TRAINING.items():
        if key in parser.config:
            parser[key] = value
    ConfigParser.export_config_file(parser.config, str(path), indent=2)


def _local_scores(weights: Path, studies: dict[str, Path]) -> dict[str, float]:
    """The studies' mean voxel entropy computed here from the bundle's pre-processing, inferer and weights."""
    import torch

    from dycon_monai.monailabel import study_entropy

    parser = _bundle_parser()
    net = parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    return {
        sid: study_entropy(net, pre({"image": str(path)})["image"], inferer=inferer) for sid, path in studies.items()
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    venv = _venv_or_skip()
    import torch

    from dycon_monai.data import make_synthetic_cohort
    from dycon_monai.monailabel import prepare_app

    for required in ("inference.json", "metadata.json"):
        assert (BUNDLE / "configs" / required).is_file(), f"bundle {BUNDLE} lacks configs/{required}"
    work = tmp_path_factory.mktemp("monailabel")

    # weights: the bundle's network_def, random initialisation, saved as a bare state dict (what model.pt holds)
    torch.manual_seed(0)
    weights = work / "model.pt"
    torch.save(_bundle_parser().get_parsed_content("network_def", instantiate=True).state_dict(), weights)

    app = prepare_app(work / "app", BUNDLE, model_name=MODEL, weights=weights)
    _shrink_training(app / "model" / MODEL)

    # studies: images only, one NIfTI per study, as a clinician's folder would hold them
    cohort = make_synthetic_cohort(work / "cohort", cases=N_STUDIES, seed=3, spacing=6.0)
    studies = work / "studies"
    studies.mkdir()
    images, masks = {}, {}
    for dwi in sorted(cohort.glob("rawdata/sub-*/ses-*/dwi/*_dwi.nii.gz")):
        sid = dwi.name.split("_")[0]
        images[sid] = studies / f"{sid}.nii.gz"
        shutil.copyfile(dwi, images[sid])
        masks[sid] = next(cohort.glob(f"derivatives/{sid}/ses-*/*_msk.nii.gz"))
    assert len(images) == N_STUDIES

    server = Server(venv, app, studies, work / "server.log")
    try:
        info = server.wait_ready(READY_TIMEOUT_S)
        yield {"server": server, "info": info, "app": app, "images": images, "masks": masks, "weights": weights}
    finally:
        server.stop()


def test_info_lists_the_model(served):
    server, info = served["server"], served["info"]
    if MODEL not in info.get("models", {}):
        server.fail(f"/info/ does not list {MODEL}: models = {list(info.get('models', {}))}")
    model = info["models"][MODEL]
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    channel_def = next(iter(metadata["network_data_format"]["outputs"].values()))["channel_def"]
    expected = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    assert model["labels"] == expected
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert STRATEGY in info.get("strategies", {}), info.get("strategies")
    assert STRATEGY in info.get("scoring", {}), info.get("scoring")
    if (BUNDLE / "configs" / "train.json").is_file():
        assert MODEL in info.get("trainers", {}), f"train.json exists but no trainer listed: {info.get('trainers')}"


def test_infer_returns_segmentation_with_study_geometry(served, tmp_path):
    import nibabel as nib
    import numpy as np

    server = served["server"]
    sid, path = next(iter(sorted(served["images"].items())))
    status, data, headers = server.request("POST", f"/infer/{MODEL}", query={"image": sid, "output": "image"})
    if status != 200:
        server.fail(f"/infer/{MODEL} on {sid} answered {status}: {data[:2000]!r}")
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(data)
    seg = nib.load(str(out))
    ref = nib.load(str(path))
    assert seg.shape[:3] == ref.shape[:3], f"segmentation shape {seg.shape} != study shape {ref.shape}"
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4, err_msg="segmentation affine != study affine")
    values = np.unique(np.asarray(seg.dataobj))
    assert set(values.tolist()) <= {0, 1}, f"segmentation values {values} are not a binary mask"


def test_scoring_and_active_learning_pick_the_most_uncertain_study(served):
    server, images = served["server"], served["images"]
    summary = server.json("POST", f"/scoring/{STRATEGY}", query={"run_sync": "true"}, json_body={"device": "cpu"})
    assert summary["total"] == N_STUDIES and summary["executed"] == N_STUDIES, summary
    server_scores = {r["id"]: r["score"] for r in summary["ranking"]}
    assert set(server_scores) == set(images)
    assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in server_scores.values()), server_scores

    # the same numbers from the bundle's own pre-processing, inferer and weights, computed in this environment
    local = _local_scores(served["weights"], images)
    for sid in images:
        assert server_scores[sid] == pytest.approx(local[sid], abs=2e-3), (sid, server_scores, local)

    ranking = [r["id"] for r in summary["ranking"]]
    first = server.json("POST", f"/activelearning/{STRATEGY}", json_body={})
    assert first["id"] == ranking[0], (first, summary["ranking"])
    assert first[STRATEGY] == pytest.approx(server_scores[ranking[0]])
    assert Path(first["path"]).name == images[ranking[0]].name

    # once that study is labeled, the next most uncertain one comes next
    _save_label(server, ranking[0], served["masks"][ranking[0]])
    second = server.json("POST", f"/activelearning/{STRATEGY}", json_body={})
    assert second["id"] == ranking[1], (second, summary["ranking"])


def _save_label(server: Server, sid: str, mask: Path) -> None:
    body, ctype = _multipart({"params": "{}"}, {"label": (f"{sid}.nii.gz", mask.read_bytes())})
    status, data, _ = server.request(
        "PUT", "/datastore/label", query={"image": sid, "tag": "final"}, body=body, content_type=ctype
    )
    if status != 200:
        server.fail(f"PUT /datastore/label for {sid} answered {status}: {data[:2000]!r}")


def _train(server: Server, params: dict[str, Any]) -> None:
    """POST /train/<model> and wait (bounded) until the background task is DONE; fail with its output otherwise."""
    task = server.json("POST", f"/train/{MODEL}", json_body=params)
    assert task and task.get("id"), task
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        tasks = server.json("GET", "/train/", query={"all": "true"})
        mine = [t for t in tasks if t.get("id") == task["id"]]
        if mine and mine[0].get("status") in ("DONE", "ERROR"):
            if mine[0]["status"] != "DONE":
                details = "\n".join(mine[0].get("details", []))
                server.fail(f"training {params} ended with status {mine[0]['status']}; last task output:\n{details}")
            return
        time.sleep(3)
    server.request("DELETE", "/train/")
    server.fail(f"training {params} did not finish within {TRAIN_TIMEOUT_S} s")


def _label_some(served: dict) -> list[str]:
    server, masks = served["server"], served["masks"]
    datastore = server.json("GET", "/datastore/", query={"output": "all"})
    labeled = [sid for sid, obj in datastore.get("objects", {}).items() if obj.get("labels", {}).get("final")]
    for sid in sorted(masks):
        if len(labeled) >= N_LABELED:
            break
        if sid not in labeled:
            _save_label(server, sid, masks[sid])
            labeled.append(sid)
    return labeled


def test_short_training_run_completes(served):
    """The stock BundleTrainTask behaviour (labeled studies only): completes and publishes new weights."""
    server = served["server"]
    if not (BUNDLE / "configs" / "train.json").is_file():
        pytest.fail(f"{BUNDLE} has no configs/train.json: MONAI Label lists no trainer without it")
    _label_some(served)
    model_pt = served["app"] / "model" / MODEL / "models" / "model.pt"
    before = model_pt.stat().st_mtime_ns
    params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}
    _train(server, {**params, "dycon_unlabeled": False})
    # training wrote new weights where MONAI Label serves them from (the bundle's models/model.pt) ...
    assert model_pt.stat().st_mtime_ns > before, f"{model_pt} was not updated by training"
    # ... and the server infers with them
    sid = sorted(served["images"])[-1]
    code, data, _ = server.request("POST", f"/infer/{MODEL}", query={"image": sid, "output": "image"})
    if code != 200:
        server.fail(f"/infer/{MODEL} after training answered {code}: {data[:2000]!r}")


def test_training_uses_unlabeled_datastore_studies(served):
    """DyCONBundleTrainTask: the studies without a label become the bundle's unlabeled stream."""
    server = served["server"]
    labeled = _label_some(served)
    unlabeled = sorted(set(served["images"]) - set(labeled))
    params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}
    _train(server, params)
    log = server.log_tail(chars=10**7)
    if f"DyCON train:: {len(unlabeled)} unlabeled studies from the datastore" not in log:
        server.fail(f"the train task did not pass the {len(unlabeled)} unlabeled studies {unlabeled} to the bundle")
    override = [line for line in log.splitlines() if "> train#unlabeled_dataset#data:" in line]
    assert override, "monai.bundle.run did not log the train#unlabeled_dataset#data override"
    # the run went through DyconWorkflow, as on the command line: a run folder with its record and log
    records = sorted(served["app"].rglob("run_info.json"), key=lambda p: p.stat().st_mtime)
    assert records, f"no run record under {served['app']}: the training did not go through DyconWorkflow"
    info = json.loads(records[-1].read_text())
    assert len(info["overrides"]["train#unlabeled_dataset#data"]) == len(unlabeled)
    assert info["unlabeled_cases"] == len(unlabeled)
    assert (records[-1].parent / "config.json").is_file() and (records[-1].parent / "log.txt").is_file()
