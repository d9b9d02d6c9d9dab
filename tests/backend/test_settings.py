"""Settings from the environment: defaults, parsing, errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.settings import Settings, SettingsError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.port == 9090 and s.model_dir == Path("models") and s.redis_url is None
    assert s.device == "auto" and s.net_config == "small" and s.strategy == "auto" and s.image_size == 384
    assert s.image_max_size == 1024
    assert s.train_threshold == 10 and s.worker_nice == 10
    assert not s.auth_enabled and s.allow_hosts == () and s.dense_fields == {}
    assert s.torch_device() in ("cpu", "cuda")


def test_image_max_size_follows_and_bounds_the_image_size() -> None:
    assert Settings.from_env({"MTAL_IMAGE_SIZE": "1536"}).image_max_size == 1536
    assert Settings.from_env({"MTAL_IMAGE_SIZE": "320", "MTAL_IMAGE_MAX_SIZE": "640"}).image_max_size == 640
    with pytest.raises(SettingsError, match="MTAL_IMAGE_MAX_SIZE"):
        Settings.from_env({"MTAL_IMAGE_SIZE": "512", "MTAL_IMAGE_MAX_SIZE": "256"})


def test_parsing(tmp_path: Path) -> None:
    ckpt = tmp_path / "init.pt"
    ckpt.write_bytes(b"x")
    s = Settings.from_env(
        {
            "LABEL_STUDIO_URL": "http://ls:8080/",
            "LABEL_STUDIO_API_KEY": "tok",
            "MODEL_DIR": str(tmp_path),
            "REDIS_URL": "redis://r:6379/0",
            "PORT": "9191",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "p",
            "MTAL_DEVICE": "CPU",
            "MTAL_NET_CONFIG": "tiny",
            "MTAL_TRAIN_THRESHOLD": "10",
            "MTAL_IMAGE_SIZE": "320",
            "MTAL_ALLOW_HOSTS": "a.example.com, *.b.org ,",
            "MTAL_DENSE_FIELDS": "depth=depth_map, normals",
            "MTAL_INITIAL_CHECKPOINT": str(ckpt),
            "LOG_LEVEL": "debug",
            "MTAL_TRAIN_LR": "0.01",
            "MTAL_SET_SAMPLING": "off",
            "MTAL_CLUSTERS": "0",
            "MTAL_WORKER_NICE": "0",
        }
    )
    assert s.label_studio_url == "http://ls:8080" and s.label_studio_api_key == "tok"
    assert s.port == 9191 and s.auth_enabled and s.device == "cpu" and s.torch_device() == "cpu"
    assert s.allow_hosts == ("a.example.com", "*.b.org")
    assert s.dense_fields == {"depth": "depth_map", "normals": "normals"}
    assert s.initial_checkpoint == ckpt and s.log_level == "DEBUG" and s.train_threshold == 10
    assert s.train_lr == 0.01 and s.set_sampling is False and s.clusters == 0
    assert s.worker_nice == 0


def test_rank_max_tasks_defaults_off() -> None:
    assert Settings.from_env({}).rank_max_tasks == 0
    assert Settings.from_env({"MTAL_RANK_MAX_TASKS": "500"}).rank_max_tasks == 500


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"MTAL_DEVICE": "tpu"}, "MTAL_DEVICE"),
        ({"MTAL_IMAGE_SIZE": "100"}, "MTAL_IMAGE_SIZE"),
        ({"MTAL_NET_CONFIG": "huge"}, "MTAL_NET_CONFIG"),
        ({"MTAL_TRAIN_THRESHOLD": "-1"}, "MTAL_TRAIN_THRESHOLD"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_USER"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL"),
        ({"MTAL_DENSE_FIELDS": "depth=,x"}, "MTAL_DENSE_FIELDS"),
        ({"MTAL_INITIAL_CHECKPOINT": "/nonexistent/x.pt"}, "MTAL_INITIAL_CHECKPOINT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"MTAL_TRAIN_LR": "fast"}, "MTAL_TRAIN_LR"),
        ({"MTAL_VAL_FRACTION": "1.0"}, "MTAL_VAL_FRACTION"),
        ({"MTAL_SET_SAMPLING": "maybe"}, "MTAL_SET_SAMPLING"),
        ({"MTAL_TRAIN_EPOCHS": "0"}, "MTAL_TRAIN_EPOCHS"),
        ({"MTAL_WORKER_NICE": "20"}, "MTAL_WORKER_NICE"),
        ({"MTAL_WORKER_NICE": "-5"}, "MTAL_WORKER_NICE"),
        ({"MTAL_RANK_MAX_TASKS": "-1"}, "MTAL_RANK_MAX_TASKS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_strategy_must_be_auto_or_registered() -> None:
    assert Settings.from_env({"MTAL_STRATEGY": "partal"}).strategy == "partal"
    with pytest.raises(SettingsError, match="MTAL_STRATEGY.*coreset"):
        Settings.from_env({"MTAL_STRATEGY": "best"})


def test_image_cache_defaults_under_the_model_dir() -> None:
    assert Settings.from_env({"MODEL_DIR": "/m"}).cache_dir == Path("/m/.image-cache")
    assert Settings.from_env({"MTAL_CACHE_DIR": "off"}).cache_dir is None
    assert Settings.from_env({"MTAL_CACHE_DIR": "/tmp/c"}).cache_dir == Path("/tmp/c")


AUTO_DENSE = "mtal_unweighted"  # the best measured in docs/results.md (README, MTAL_STRATEGY)


def test_backend_auto_strategy_per_network() -> None:
    from backend.serving.model import load_schema
    from backend.serving.strategy import strategy_for

    dense = load_schema('<View><Image name="image" value="$image"/><BrushLabels name="sem" toName="image">'
                        '<Label value="a"/></BrushLabels></View>')
    boxes = load_schema('<View><Image name="image" value="$image"/><BrushLabels name="sem" toName="image">'
                        '<Label value="a"/></BrushLabels><RectangleLabels name="obj" toName="image">'
                        '<Label value="a"/></RectangleLabels></View>')
    two = load_schema('<View><Image name="image" value="$image"/><BrushLabels name="sem" toName="image">'
                      '<Label value="a"/></BrushLabels><BrushLabels name="parts" toName="image">'
                      '<Label value="p"/></BrushLabels></View>')
    assert strategy_for(Settings(), two).name == AUTO_DENSE
    assert strategy_for(Settings(), dense).name == "partal_image"  # one modality: no committee of pairs
    assert strategy_for(Settings(strategy="mtal"), two).name == "mtal"
    assert strategy_for(Settings(), boxes).name == "boxmask"


def test_pool_bounds() -> None:
    s = Settings.from_env({})
    assert s.pool_max_images == 2000 and s.pool_max_mb == 2048
    s = Settings.from_env({"MTAL_POOL_MAX_IMAGES": "0", "MTAL_POOL_MAX_MB": "10"})
    assert s.pool_max_images == 0 and s.pool_max_mb == 10
    for env, variable in (({"MTAL_POOL_MAX_IMAGES": "-1"}, "MTAL_POOL_MAX_IMAGES"),
                          ({"MTAL_POOL_MAX_IMAGES": "many"}, "MTAL_POOL_MAX_IMAGES"),
                          ({"MTAL_POOL_MAX_MB": "0"}, "MTAL_POOL_MAX_MB"),
                          ({"MTAL_POOL_MAX_MB": "1.5"}, "MTAL_POOL_MAX_MB")):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env(env)


def test_pretrain_minutes() -> None:
    """MTAL_PRETRAIN_MINUTES: off (0) by default; a number of minutes in [0, 360]; anything else is refused."""
    assert Settings.from_env({}).pretrain_minutes == 0
    assert Settings.from_env({"MTAL_PRETRAIN_MINUTES": "2.5"}).pretrain_minutes == 2.5
    for raw in ("-1", "361", "nan", "ten"):
        with pytest.raises(SettingsError, match="MTAL_PRETRAIN_MINUTES"):
            Settings.from_env({"MTAL_PRETRAIN_MINUTES": raw})
