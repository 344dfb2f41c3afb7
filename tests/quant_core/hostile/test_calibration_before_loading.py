"""Issue 17 part 3 through the Python API: a calibration file that cannot be read is refused before
the model loads (it was refused only after loading, by the calibration driver)."""
import pytest

import quant_core.auto as auto
from quant_core.errors import CalibrationError


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the calibration file was checked")
    monkeypatch.setattr(auto, "load_model", refuse)


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"", "empty"),
                                              (bytes(range(256)), "UTF-8")])
def test_load_for_generation_checks_the_calibration_file_first(content, message, tmp_path, no_load):
    path = tmp_path / "calibration.txt"
    if content is not None:
        path.write_bytes(content)
    config = {"algorithm": "gptq", "group_size": 32, "calibration_dataset": str(path)}
    with pytest.raises(CalibrationError, match=message):
        auto.load_for_generation(str(tmp_path), quantization_config=config)
