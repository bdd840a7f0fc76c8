"""Ground truth: what the real openai, ollama and huggingface_hub clients send, classified.

Each client is pointed at a recording server on 127.0.0.1 (tests/helpers/recorder.py); the raw
requests it records are fed to the classifier. If a client changes its wire format, these
tests say so.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import pytest
from helpers.recorder import Recorded, Recorder

from egresswatch.classify import classify
from egresswatch.model import FindingKind, PayloadType

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
pytest.importorskip("huggingface_hub")

P = PayloadType
# A syntactically valid OpenAI project key (random-looking, never issued).
OPENAI_KEY = "sk-proj-Q3v8Lm2Xr7Tz9Kp4Wn6Yb1Hc5Jd0Fg" + "A1b2C3d4E5f6G7h8"


def _wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    return buf.getvalue()


@pytest.fixture(scope="module")
def openai_requests() -> dict[str, tuple[Recorded, Recorder]]:
    out: dict[str, tuple[Recorded, Recorder]] = {}
    with Recorder() as rec:
        client = openai.OpenAI(base_url=rec.url + "/v1", api_key=OPENAI_KEY, max_retries=0)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Write to jane.doe@example.com about the trip."},
            ],
        )
        out["chat"] = (rec.requests[-1], rec)
        client.embeddings.create(model="text-embedding-3-small", input="a quiet sentence")
        out["embeddings"] = (rec.requests[-1], rec)
        client.files.create(
            file=("notes.txt", b"meeting notes\nAWS key AKIAIOSFODNN7EXAMPLE\n", "text/plain"),
            purpose="assistants",
        )
        out["files"] = (rec.requests[-1], rec)
        client.audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", _wav(), "audio/wav")
        )
        out["audio"] = (rec.requests[-1], rec)
        client.images.generate(model="dall-e-3", prompt="a lighthouse at dusk")
        out["images"] = (rec.requests[-1], rec)
    return out


@pytest.mark.parametrize(
    ("name", "path", "expected"),
    [
        ("chat", "/v1/chat/completions", (P.CHAT_PROMPT,)),
        ("embeddings", "/v1/embeddings", (P.EMBEDDING_INPUT,)),
        ("files", "/v1/files", (P.FILE_UPLOAD, P.CREDENTIAL)),
        ("audio", "/v1/audio/transcriptions", (P.AUDIO,)),
        ("images", "/v1/images/generations", (P.IMAGE,)),
    ],
)
def test_openai_client_requests(
    openai_requests: dict[str, tuple[Recorded, Recorder]],
    name: str,
    path: str,
    expected: tuple[PayloadType, ...],
) -> None:
    req, rec = openai_requests[name]
    assert req.method == "POST" and req.path == path
    result = classify(rec.observation(req))
    assert result.payload_types == expected
    # the API key rides in the Authorization header: reported, redacted, not a credential payload
    header_keys = [f for f in result.findings if f.where == "header:authorization"]
    assert [(f.kind, f.detail, f.redacted) for f in header_keys] == [
        (FindingKind.API_KEY, "openai", "sk-proj-…G7h8")
    ]
    for finding in result.findings:
        assert OPENAI_KEY not in finding.redacted


def test_openai_chat_prompt_finds_the_email(
    openai_requests: dict[str, tuple[Recorded, Recorder]],
) -> None:
    req, rec = openai_requests["chat"]
    found = {(f.kind, f.redacted, f.where) for f in classify(rec.observation(req)).findings}
    assert (FindingKind.EMAIL, "j***@example.com", "body") in found


def test_openai_uploaded_text_file_is_scanned(
    openai_requests: dict[str, tuple[Recorded, Recorder]],
) -> None:
    req, rec = openai_requests["files"]
    assert (req.header("content-type") or "").startswith("multipart/form-data")
    found = {(f.kind, f.detail, f.where) for f in classify(rec.observation(req)).findings}
    assert (FindingKind.API_KEY, "aws", "body") in found


@pytest.fixture(scope="module")
def ollama_requests() -> dict[str, tuple[Recorded, Recorder]]:
    out: dict[str, tuple[Recorded, Recorder]] = {}
    with Recorder() as rec:
        client = ollama.Client(host=rec.url)
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi, I am Ann"}])
        out["chat"] = (rec.requests[-1], rec)
        client.generate(model="llama3.2", prompt="Once upon a time")
        out["generate"] = (rec.requests[-1], rec)
        client.embed(model="all-minilm", input="embed me")
        out["embed"] = (rec.requests[-1], rec)
        client.pull("llama3.2")
        out["pull"] = (rec.requests[-1], rec)
    return out


@pytest.mark.parametrize(
    ("name", "path", "expected"),
    [
        ("chat", "/api/chat", (P.CHAT_PROMPT,)),
        ("generate", "/api/generate", (P.COMPLETION,)),
        ("embed", "/api/embed", (P.EMBEDDING_INPUT,)),
        ("pull", "/api/pull", (P.MODEL_DOWNLOAD,)),
    ],
)
def test_ollama_client_requests(
    ollama_requests: dict[str, tuple[Recorded, Recorder]],
    name: str,
    path: str,
    expected: tuple[PayloadType, ...],
) -> None:
    req, rec = ollama_requests[name]
    assert (req.method, req.path) == ("POST", path)
    result = classify(rec.observation(req))
    assert result.payload_types == expected
    assert result.findings == ()


_HF_SCRIPT = textwrap.dedent(
    """
    import sys
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import send_telemetry

    path = hf_hub_download("openai-community/gpt2", "config.json", cache_dir=sys.argv[1])
    print(open(path).read().strip())
    send_telemetry("examples", library_name="transformers", library_version="4.46.0",
                   user_agent={"pipeline": "text-classification", "framework": "pt"})
    # gradio's analytics ride the same call, its topic being a URL (gradio/analytics.py)
    send_telemetry("https://api.gradio.app/gradio-launched-telemetry", library_name="gradio",
                   library_version="5.0.0", user_agent={"is_sharing_on": "False"})
    from huggingface_hub.utils import _telemetry  # the worker thread is a daemon: wait for it
    _telemetry._TELEMETRY_QUEUE.join()
    """
)


@pytest.fixture(scope="module")
def hub_requests(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Recorded], Recorder]:
    tmp = tmp_path_factory.mktemp("hf")
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "HF_HUB_DISABLE_TELEMETRY",
            "DISABLE_TELEMETRY",
            "DO_NOT_TRACK",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_TOKEN",
        )
    }
    with Recorder() as rec:
        # constants are read at import: the client must start with HF_ENDPOINT already set
        env.update(HF_ENDPOINT=rec.url, HF_HOME=str(tmp / "home"), HF_HUB_DISABLE_XET="1")
        done = subprocess.run(
            [sys.executable, "-c", _HF_SCRIPT, str(tmp / "cache")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "GPT2LMHeadModel" in done.stdout
        rec.wait_for(lambda r: "gradio-launched" in r.path, timeout=20)
        return rec.requests, rec


def test_hub_download_and_metadata_are_model_downloads(
    hub_requests: tuple[list[Recorded], Recorder],
) -> None:
    requests, rec = hub_requests
    resolve = [r for r in requests if "/resolve/" in r.path]
    assert {r.method for r in resolve} >= {"HEAD", "GET"}, [(r.method, r.path) for r in requests]
    for req in resolve:
        assert req.path == "/openai-community/gpt2/resolve/main/config.json"
        for category in (None, "model-hub"):
            result = classify(rec.observation(req, host="huggingface.co"), category)
            assert result.payload_types == (P.MODEL_DOWNLOAD,)
            assert result.findings == ()


def test_hub_registry_refresh_is_an_update_check(
    hub_requests: tuple[list[Recorded], Recorder],
) -> None:
    requests, rec = hub_requests
    fetches = [r for r in requests if r.path == "/api/agent-harnesses"]
    if not fetches:
        pytest.skip("this huggingface_hub version does not fetch the agent-harness registry")
    result = classify(rec.observation(fetches[0], host="huggingface.co"), "model-hub")
    assert result.payload_types == (P.UPDATE_CHECK,)


def test_hub_telemetry_head_is_telemetry_with_data_in_user_agent(
    hub_requests: tuple[list[Recorded], Recorder],
) -> None:
    requests, rec = hub_requests
    (tele,) = [r for r in requests if r.path == "/api/telemetry/examples"]
    assert tele.method == "HEAD"
    assert tele.path == "/api/telemetry/examples"
    ua = tele.header("user-agent") or ""
    assert "pipeline/text-classification" in ua  # the data rides in the User-Agent
    result = classify(rec.observation(tele, host="huggingface.co"), "model-hub")
    assert result.payload_types == (P.TELEMETRY,)
    assert "data-in-user-agent" in result.flags


def test_recorder_keeps_raw_bytes(tmp_path: Path) -> None:
    with Recorder() as rec:
        client = openai.OpenAI(base_url=rec.url + "/v1", api_key=OPENAI_KEY, max_retries=0)
        client.embeddings.create(model="m", input="x")
        (req,) = rec.requests
    assert req.body.startswith(b"{") and b'"input"' in req.body
    assert req.header("authorization") == f"Bearer {OPENAI_KEY}"


def test_gradio_analytics_through_the_hub_are_telemetry(
    hub_requests: tuple[list[Recorded], Recorder],
) -> None:
    requests, rec = hub_requests
    (tele,) = [r for r in requests if "gradio-launched-telemetry" in r.path]
    assert tele.method == "HEAD"
    assert tele.path.startswith("/api/telemetry/https%3A/api.gradio.app/")
    assert "is_sharing_on/False" in (tele.header("user-agent") or "")
    result = classify(rec.observation(tele, host="huggingface.co"), "model-hub")
    assert result.payload_types == (P.TELEMETRY,)
    assert "data-in-user-agent" in result.flags
