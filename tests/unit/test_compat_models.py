"""The data files are typed (imagegen.compat models): a malformed one is one line naming it."""

from __future__ import annotations

import shutil

import pytest

from imagegen import compat
from imagegen.errors import UserInputError

pytestmark = pytest.mark.unit


def test_shipped_data_loads_as_models():
    fl = compat.flavors()
    assert set(fl) == {"slim", "full"} and fl["slim"].runtime_role == "runtime" and fl["full"].runtime_role == "dev"
    assert fl["slim"].policy["no_shell"] is True and fl["slim"].slimming["bytecode"] == "compile"
    assert "protect" in compat.prune_rules() and all(isinstance(g, list) for g in compat.prune_rules().values())
    g = compat.gpus()
    assert 0 < g["min_container_share"] < 1 and "sm_75" in g["compute_capabilities"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("flavors.yaml", "slim:\n  description: x\n  runtime_role: builder\n  slimming: {}\n",
     r"flavors\.yaml: slim\.runtime_role: Input should be 'runtime' or 'dev'$"),
    ("flavors.yaml", "slim:\n  description: x\n  runtime_role: runtime\n  slimming: {}\n  polcy: {}\n",
     r"flavors\.yaml: slim\.polcy: Extra inputs are not permitted$"),
    ("prune.yaml", "docs: usr/share/doc\n", r"prune\.yaml: docs: Input should be a valid list$"),
    ("gpus.yaml", "compute_capabilities: {sm_75: T4}\nmin_container_share: 2\n",
     r"gpus\.yaml: min_container_share: Input should be less than 1$"),
])
def test_a_malformed_data_file_is_one_line_naming_it(tmp_path, name, text, message):
    data = tmp_path / "data"
    shutil.copytree(compat.DATA, data)
    (data / name).write_text(text)
    loader = {"flavors.yaml": compat.flavors, "prune.yaml": compat.prune_rules, "gpus.yaml": compat.gpus}[name]
    with pytest.raises(UserInputError, match=message):
        loader(data)
