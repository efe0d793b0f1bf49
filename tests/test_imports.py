"""What importing the library costs: `import uni3d` and the modules data workers import do not pull in the ViT
stack (timm, torchvision), which only building a model needs; the public names still resolve on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import uni3d


def test_the_package_and_its_data_side_modules_do_not_import_timm() -> None:
    code = "import sys, uni3d, uni3d.teachers, uni3d.zeroshot, uni3d.presets; print('timm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_every_public_name_resolves() -> None:
    assert set(uni3d.__all__) <= set(dir(uni3d))
    for name in uni3d.__all__:
        assert getattr(uni3d, name) is not None, name
    assert uni3d.create_model("nano", embed_dim=384).embed_dim == 384
    with pytest.raises(AttributeError, match="no_such_name"):
        uni3d.no_such_name  # noqa: B018
