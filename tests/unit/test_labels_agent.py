"""The agent's own labels: `--label K=V` (repeatable) and `labels:` in agent.yaml, checked as selectors
need them, merged flag over file, and carried in every Hello and the EnrollRequest."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.cli import build_parser
from edgefleet.agent.convert import hello_to_pb
from edgefleet.agent.flags import parse_args
from edgefleet.agent.messages import Hello
from edgefleet.agent.options import RunOptions

RUN = ["run", "--controller", "fleet.example:50051", "--source", "vtest.avi"]


def config(tmp_path: Path, text: str | None, *flags: str):
    argv = list(RUN)
    if text is not None:
        path = tmp_path / "agent.yaml"
        path.write_text(text)
        argv += ["--config", str(path)]
    return parse_args(build_parser(), [*argv, *flags]).config


def refusal(tmp_path: Path, capsys, text: str | None, *flags: str) -> str:
    with pytest.raises(SystemExit) as exc:
        config(tmp_path, text, *flags)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_labels_from_flags_and_file_merge_and_the_flag_wins(tmp_path):
    assert config(tmp_path, None).labels == {}
    assert config(tmp_path, None, "--label", "site=lab", "--label", "tier=a").labels == {"site": "lab", "tier": "a"}
    assert config(tmp_path, "labels:\n  site: lab\n  floor: 2\n").labels == {"site": "lab", "floor": "2"}
    merged = config(tmp_path, "labels: {site: lab, floor: 2}\n", "--label", "site=yard")
    assert merged.labels == {"site": "yard", "floor": "2"}
    assert RunOptions.from_config(merged).labels == {"site": "yard", "floor": "2"}


@pytest.mark.parametrize(("text", "flags", "says"), [
    (None, ("--label", "site"), "argument --label: label 'site': write it as KEY=VALUE"),
    (None, ("--label", "my site=lab"), "label key 'my site'"),
    (None, ("--label", "site=a,b"), "values use letters, digits and -_./ only"),
    ("labels: [site=lab]\n", (), "agent.yaml:1: labels: must be a mapping (site: lab), got a list"),
    ("labels:\n  site:\n", (), "agent.yaml:1: labels: site: must be a single value, got nothing"),
    ("labels:\n  'site lab': x\n", (), "agent.yaml:1: labels: label key 'site lab'"),
    ("labels:\n  gpu: true\n", (), "agent.yaml:1: labels"),
])
def test_bad_labels_are_refused_naming_the_flag_or_the_line(tmp_path, capsys, text, flags, says):
    assert says in refusal(tmp_path, capsys, text, *flags)


def test_serve_takes_labels_too(tmp_path):
    args = parse_args(build_parser(), ["serve", "--listen", "127.0.0.1:0", "--controller", "h:1",
                                       "--label", "site=lab"])
    assert args.config.labels == {"site": "lab"}


def test_hello_carries_the_labels():
    hello = Hello(HardwareProfile(), DevicePlan(), ["cam0"], 0.0, labels={"site": "lab"})
    assert dict(hello_to_pb(hello, "0.1.0").labels) == {"site": "lab"}
