"""tsc-central keygen and sign-plan."""

from __future__ import annotations

import pytest

from edge_agent.messages import PlanMessage, decode
from edge_agent.signatures import load_public_key, verify_plan
from optimizer.cli import main

from conftest import CONFIGS

GOOD = str(CONFIGS / "plans" / "main-oak-am-peak.toml")
BAD = str(CONFIGS / "plans" / "main-oak-bad-yellow.toml")
SITE = str(CONFIGS / "nema-8phase.toml")


def test_keygen_then_sign_gives_a_verifiable_message(tmp_path, capsysbinary):
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "central.key").stat().st_mode & 0o777 == 0o600
    capsysbinary.readouterr()
    assert main(["sign-plan", GOOD, "--intersection", SITE, "--site", "downtown",
                 "--key", str(tmp_path / "central.key")]) == 0
    message = decode(capsysbinary.readouterr().out.strip(), PlanMessage)
    trusted = {"central": load_public_key((tmp_path / "central.pub").read_bytes())}
    assert verify_plan(message, trusted) and message.site == "downtown"


def test_a_plan_that_fails_the_guard_is_not_signed(tmp_path, capsys):
    main(["keygen", "--out", str(tmp_path)])
    capsys.readouterr()
    assert main(["sign-plan", BAD, "--intersection", SITE, "--site", "downtown",
                 "--key", str(tmp_path / "central.key")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "yellow-floor" in err and "not signed" in err


def test_keygen_keeps_an_existing_key_and_bad_input_exits_2(tmp_path, capsys):
    main(["keygen", "--out", str(tmp_path)])
    assert main(["keygen", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path), "--force"]) == 0
    assert main(["sign-plan", GOOD, "--intersection", SITE, "--site", "downtown",
                 "--key", str(tmp_path / "missing.key")]) == 2
    (tmp_path / "junk.key").write_text("not a key")
    assert main(["sign-plan", GOOD, "--intersection", SITE, "--site", "downtown",
                 "--key", str(tmp_path / "junk.key")]) == 2


def test_help_names_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "sign-plan" in capsys.readouterr().out
