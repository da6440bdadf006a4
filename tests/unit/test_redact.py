"""sgdtune/redact.py: which text is masked (tables of URL and parameter forms), which is left
alone, and the masked output streams every process of sgdtune installs."""

import subprocess
import sys
import textwrap

import pytest

from sgdtune.redact import MaskedStream, redact, redact_tree


@pytest.mark.parametrize("text,masked", [
    ("postgresql://sgd:PW@127.0.0.1:5432/db", "postgresql://sgd:***@127.0.0.1:5432/db"),
    ("postgresql://:PW@host/db", "postgresql://:***@host/db"),
    ("postgresql+psycopg://a@b:PW@host/db", "postgresql+psycopg://a@b:***@host/db"),
    ("postgresql://sgd@host/db?sslmode=require&password=PW", "postgresql://sgd@host/db?sslmode=require&password=***"),
    ("postgresql://sgd@host/db?PassWord=PW&x=1", "postgresql://sgd@host/db?PassWord=***&x=1"),
    ("https://h/x?access_token=PW&api_key=PW&secret=PW&sslpassword=PW&pwd=PW&passwd=PW",
     "https://h/x?access_token=***&api_key=***&secret=***&sslpassword=***&pwd=***&passwd=***"),
    ("host=h password=PW dbname=d", "host=h password=*** dbname=d"),
    ("python -m sgdtune.study x.toml --storage postgresql://u:PW@h/db --tracking-uri http://u:PW@h:5000 --seed 1",
     "python -m sgdtune.study x.toml --storage postgresql://u:***@h/db --tracking-uri http://u:***@h:5000 --seed 1"),
    ('storage = "postgresql://sgd:PW@127.0.0.1:5/o"\n', 'storage = "postgresql://sgd:***@127.0.0.1:5/o"\n'),
    ("connection to 'postgresql://u:PW@h/db' failed", "connection to 'postgresql://u:***@h/db' failed"),
])
def test_every_url_form_is_masked(text, masked):
    assert redact(text) == masked


@pytest.mark.parametrize("text,masked", [
    # a raw '@' in the password: everything up to the authority's last '@' is the password
    ("postgresql://u:SE@CRET@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
    ("postgresql://u:a@b@c@host/db?sslmode=require", "postgresql://u:***@host/db?sslmode=require"),
    ("http://u:SE@CRET@127.0.0.1:41551/#/experiments/1/runs/abc", "http://u:***@127.0.0.1:41551/#/experiments/1/runs/abc"),
    ("'postgresql://u:SE@CRET@h' and 'sqlite:///x.db'", "'postgresql://u:***@h' and 'sqlite:///x.db'"),
    # an '@' after the authority (in the path or the query) is not the password's
    ("http://u:PW@h:5000/#/x?owner=a@b", "http://u:***@h:5000/#/x?owner=a@b"),
])
def test_a_password_runs_to_the_last_at_sign_before_the_host(text, masked):
    assert redact(text) == masked


@pytest.mark.parametrize("text,masked", [
    ("https://maps.example/api?key=PW&q=x", "https://maps.example/api?key=***&q=x"),  # a bare key in a URL's query
    ("https://h/x?apiKey=PW&x-api-key=PW&client_secret=PW", "https://h/x?apiKey=***&x-api-key=***&client_secret=***"),
    ("AWS_SECRET_ACCESS_KEY=PW AWS_SESSION_TOKEN=PW", "AWS_SECRET_ACCESS_KEY=*** AWS_SESSION_TOKEN=***"),
    ("host=h sslpassword=PW sslkey=/etc/k.pem", "host=h sslpassword=*** sslkey=/etc/k.pem"),
])
def test_a_credential_parameter_is_masked_by_its_name(text, masked):
    assert redact(text) == masked


@pytest.mark.parametrize("text", [
    "http://127.0.0.1:5000/#/experiments/1/runs", "sqlite:////abs/mlruns/mlflow.db",
    "mlruns/optuna.journal", "file:///x/artifacts", "val_acc=0.9 lr=0.1",
    # MLflow's own link parameters: names that end in "Key" and hold no secret
    "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=sgdtune-trials",
    "http://h:5000/#/experiments/3/runs?orderByKey=attributes.start_time&orderByAsc=false",
    # messages that hold no URL and no credential
    "error: --set: must look like KEY=VALUE (VALUE in TOML syntax); got 'train.momentum'",
    "--set model.key=3 sort_key=name partition-key=a",
    "grpc://127.0.0.1:13000", "http://[::1]:5000/health",
])
def test_text_without_a_secret_is_unchanged(text):
    assert redact(text) == text


def test_redact_tree_masks_every_string_of_a_report():
    tree = {"a": ["postgresql://u:PW@h/db", 1.5, None], "b": {"c": "x?token=PW"}, "n": 3}
    assert redact_tree(tree) == {"a": ["postgresql://u:***@h/db", 1.5, None], "b": {"c": "x?token=***"}, "n": 3}


class Sink:
    def __init__(self):
        self.text, self.flushes = "", 0

    def write(self, text):
        self.text += text

    def flush(self):
        self.flushes += 1


def test_a_masked_stream_masks_a_url_written_in_pieces_and_holds_a_partial_line_until_flushed():
    sink = Sink()
    stream = MaskedStream(sink)
    for piece in ("store ", "http://u:SE", "CRET@h:5000", "/x", "\n", "next "):
        stream.write(piece)
    assert sink.text == "store http://u:***@h:5000/x\n"
    stream.write("postgresql://u:PW@h/db")
    stream.flush()
    assert sink.text == "store http://u:***@h:5000/x\nnext postgresql://u:***@h/db" and sink.flushes == 1


def test_mask_output_masks_print_sys_writes_tracebacks_and_a_logging_handler_made_before_it():
    # A fresh interpreter: the handler holds the original stderr, as Optuna's does from its import.
    script = textwrap.dedent("""
        import logging, sys
        handler = logging.StreamHandler()
        logging.getLogger("lib").addHandler(handler)
        from sgdtune.redact import mask_output
        mask_output()
        mask_output()  # a second call changes nothing
        url = "http://u:" + "SECRET" + "@127.0.0.1:5000"
        print("print", url)
        sys.stdout.write("write " + url[:10])
        sys.stdout.write(url[10:] + "/#/x\\n")
        sys.stderr.write("stderr " + url + "\\n")
        logging.getLogger("lib").warning("log %s", url)
        raise RuntimeError("failed at " + url)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "SECRET" not in proc.stdout + proc.stderr
    assert "print http://u:***@127.0.0.1:5000" in proc.stdout
    assert "write http://u:***@127.0.0.1:5000/#/x" in proc.stdout
    assert "stderr http://u:***@127.0.0.1:5000" in proc.stderr
    assert "log http://u:***@127.0.0.1:5000" in proc.stderr
    assert "RuntimeError: failed at http://u:***@127.0.0.1:5000" in proc.stderr


def test_a_recorded_command_line_stays_a_command_line_when_masked_twice():
    import shlex

    args = ["x.toml", "--tracking-uri", "postgresql://sgd@h:1/db?sslmode=disable&password=PW",
            "--storage", "postgresql://u:PW@h/db"]
    command = "sgdtune study " + " ".join(shlex.quote(redact(a)) for a in args)  # as cli.study_main records it
    again = redact(command)  # and as the parent run's tag is written
    assert "PW" not in again
    assert shlex.split(again)[2:] == ["x.toml", "--tracking-uri", "postgresql://sgd@h:1/db?sslmode=disable&password=***",
                                      "--storage", "postgresql://u:***@h/db"]
