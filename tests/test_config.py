import json

import pytest

from training.config import CONFIG_DIR, load_config


def test_defaults_are_the_cpu_preset_and_paper_values():
    config = load_config()
    assert (config.model.img_size, config.model.patch_size, config.model.embed_dim, config.model.depth) == (64, 8, 192, 6)
    assert config.ijepa.num_targets == 4 and config.ijepa.target_scale == (0.15, 0.2)
    assert config.ijepa.target_aspect == (0.75, 1.5) and config.ijepa.context_scale == (0.85, 1.0)
    assert config.ijepa.ema == (0.996, 1.0) and config.optim.weight_decay == (0.04, 0.4)
    assert config.mae.mask_ratio == 0.75


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
def test_every_preset_loads(preset):
    config = load_config(preset)
    assert config.model.img_size % config.model.patch_size == 0


def test_unknown_key_and_wrong_type_fail_loudly(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"embed_dims": 10}}))
    with pytest.raises(KeyError, match="model.embed_dims"):
        load_config(bad)
    bad.write_text(json.dumps({"epochs": "ten"}))
    with pytest.raises(TypeError, match="epochs"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("no_such_preset")


def test_overrides_nest_and_coerce(tmp_path):
    config = load_config(None, optim={"lr": 1}, ijepa={"target_scale": [0.1, 0.2]})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.ijepa.target_scale == (0.1, 0.2)
