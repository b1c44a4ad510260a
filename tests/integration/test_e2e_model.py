"""System 4 end to end on h8: the Python model server (apps/model-server)
with inventories/sandbox-model.yaml: a venv per release under systemd on
port 8080 with /health; bootstrap, deploy v1/v2, a broken release rolled
back, rotate-env of the API key, rollback, verify."""
import json
import secrets

from test_e2e_support import INV, Flow, app_copy, env_file, h8  # noqa: F401

APP = "model-server"
ENV_PATH = f"/etc/{APP}/{APP}.env"
SAMPLE_ENV = INV / "sandbox-env" / "model.env"
KEY = "sandbox-model-api-key-0123456789abcdef"  # the dummy value in the sample env file


def version(f: Flow) -> str:
    status, _, body = f.http("http://127.0.0.1:8080/version")
    assert status == 200, f"/version: {status} {body[:200]}"
    return body.strip()


def predict(f: Flow, key: str) -> int:
    status, _, body = f.http("http://127.0.0.1:8080/predict", "-X", "POST", "-H", "content-type: application/json",
                             "-H", f"x-api-key: {key}", stdin_body=json.dumps({"inputs": [1, 2]}))
    if status == 200:
        assert json.loads(body)["outputs"], body
    return status


def test_model_server_end_to_end(h8, tmp_path):  # noqa: F811
    f = Flow(h8, tmp_path, "sandbox-model")

    f.fab("bootstrap")
    f.must("dpkg-query -W python3 python3-venv >/dev/null")
    assert f.stat(ENV_PATH) == f"root:{APP}:600"
    unit = f"{APP}.service"
    assert f.unit_prop(unit, "UnitFileState") == "enabled"
    assert "venv/bin/python app.py" in f.unit_prop(unit, "ExecStart")
    assert "PORT=8080" in f.unit_prop(unit, "ExecStart")

    f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "1.0.0")))
    v1 = f.current_release(APP)
    f.must(f"test -x /opt/{APP}/releases/{v1}/venv/bin/python")  # the release's own venv
    assert version(f) == "1.0.0"
    status, _, body = f.http("http://127.0.0.1:8080/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert predict(f, KEY) == 200 and predict(f, "wrong-key") == 401
    assert f.unit_prop(unit, "User") == APP

    f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "2.0.0")))
    v2 = f.current_release(APP)
    assert v2 != v1 and version(f) == "2.0.0"

    r = f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "3.0.0", fail_health=True)),
              "--set", "health.retries=5", expect=1)
    assert "health" in (r.stdout + r.stderr).lower()
    assert f.current_release(APP) == v2 and version(f) == "2.0.0"

    before = f.sha(ENV_PATH)
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "bad.env", MODEL_API_KEY="short")),
              expect=2)
    assert "MODEL_API_KEY is shorter than min_length 32" in r.stderr and f.sha(ENV_PATH) == before
    new_key = secrets.token_hex(24)
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "new.env", MODEL_API_KEY=new_key)))
    assert new_key not in r.stdout + r.stderr
    assert predict(f, new_key) == 200 and predict(f, KEY) == 401
    assert f.stat(ENV_PATH) == f"root:{APP}:600"

    f.fab("rollback")
    assert f.current_release(APP) == v1 and version(f) == "1.0.0"

    r = f.fab("verify")
    assert f.host_result("verify")["result"] in ("ok", "passed"), r.stdout
    assert "predict_needs_key" in r.stdout
