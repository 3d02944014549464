"""ResNet-18: the study's preprocessing, weights from a local file (no network), the offline
fallback, and the Fashion-MNIST ResNet-18 under the kit's trainer."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from fmnist_utils import features, models, report, train


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A random torchvision ResNet-18 state dict saved as a file, and its SHA-256."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path, models.sha256_of(path)


@pytest.fixture(autouse=True)
def no_weights_env(monkeypatch):
    monkeypatch.delenv(models.RESNET18_WEIGHTS_ENV, raising=False)


def test_preprocessing_matches_torchvision_transforms():
    x = torch.rand(3, 1, 28, 28)
    expected = TF.normalize(
        TF.resize(x, [224, 224], interpolation=TF.InterpolationMode.BILINEAR).repeat(1, 3, 1, 1),
        mean=list(models.IMAGENET_MEAN),
        std=list(models.IMAGENET_STD),
    )
    torch.testing.assert_close(models.ImageNetInput()(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="grey float images"):
        models.ImageNetInput()(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))


def test_imagenet_resnet_is_torchvisions_behind_preprocessing():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    model = models.ImageNetResNet18().eval()
    model.load_state_dict(reference.state_dict(), strict=True)  # the state dict is exactly torchvision's
    assert set(model.state_dict()) == set(reference.state_dict())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model.preprocess(x)))


def test_local_file_loads_with_its_hash_prefix_and_no_network(weights_file, monkeypatch, tmp_path):
    path, digest = weights_file

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    model, info = models.imagenet_resnet18(path, sha256_prefix=digest[:8], cache_dir=tmp_path)
    # A file trusted through its own prefix is loaded, but not called ImageNet: its SHA-256 is not torchvision's.
    assert info.pretrained and info.sha256 == digest and info.source == models.USER_SUPPLIED_SOURCE and not info.verified
    assert info.title == "ResNet-18: user-supplied weights (not verified as ImageNet)" and not model.training
    assert info.path == str(path) and info.to_dict()["verified"] is False
    saved = torch.load(path, weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name])


def test_environment_variable_names_the_file(weights_file, monkeypatch, tmp_path):
    path, digest = weights_file
    monkeypatch.setenv(models.RESNET18_WEIGHTS_ENV, str(path))
    _, info = models.imagenet_resnet18(sha256_prefix=digest[:8], cache_dir=tmp_path, allow_download=False)
    assert info.path == str(path) and info.pretrained


def test_cached_file_is_hash_checked(weights_file, tmp_path):
    path, digest = weights_file
    cached = models.resnet18_cache_file(tmp_path)
    cached.write_bytes(path.read_bytes())
    _, info = models.imagenet_resnet18(sha256_prefix=digest[:8], cache_dir=tmp_path, allow_download=False)
    assert info.source == models.USER_SUPPLIED_SOURCE and info.path == str(cached)  # not torchvision's file
    # With the official prefix, a file that merely carries the official name is refused.
    with pytest.raises(models.WeightsError, match="does not start with 'f37072fd'"):
        models.imagenet_resnet18(cache_dir=tmp_path, allow_download=False)


def test_wrong_hash_is_refused(weights_file):
    path, digest = weights_file
    with pytest.raises(models.WeightsError, match=f"{path.name}: SHA-256 {digest[:16]}.*does not start with 'f37072fd'"):
        models.load_resnet18_weights(path)
    with pytest.raises(models.WeightsError, match="does not start with 'deadbeef'"):
        models.imagenet_resnet18(path, sha256_prefix="deadbeef")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(models.WeightsError, match="nope.pth: ResNet-18 weights file not found"):
        models.imagenet_resnet18(tmp_path / "nope.pth")


def test_corrupt_file_is_refused(weights_file, tmp_path):
    path, _ = weights_file
    for name, content in (("garbage.pth", b"not a torch file at all"), ("truncated.pth", path.read_bytes()[:100_000])):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(models.WeightsError, match=f"{name}: cannot be read as a PyTorch state dict"):
            models.load_resnet18_weights(bad, sha256_prefix=models.sha256_of(bad)[:8])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: torchvision.models.resnet18(num_classes=10).state_dict(), "not torchvision ResNet-18.*size mismatch"),
        (lambda: models.SeedCNN().state_dict(), "not torchvision ResNet-18.*Missing key"),
        (lambda: {"state_dict": torchvision.models.resnet18().state_dict()}, "not a state dict of tensors"),
    ],
)
def test_other_architectures_are_refused(make, match, tmp_path):
    path = tmp_path / "other.pth"
    torch.save(make(), path)
    with pytest.raises(models.WeightsError, match=match):
        models.load_resnet18_weights(path, sha256_prefix=models.sha256_of(path)[:8])


def test_offline_fallback_is_random_init_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="randomly initialised"):
        model, info = models.imagenet_resnet18(cache_dir=tmp_path, allow_download=False, seed=4)
    assert info.source == models.RANDOM_INIT_SOURCE == "RANDOM INIT (offline fallback: no ImageNet weights)"
    assert not info.pretrained and info.path is None and "allow_download=False" in info.note
    assert "RANDOM INIT" in info.title and "RANDOM INIT" in models.model_title(info.source)
    assert info.to_dict()["title"] == info.title
    with pytest.warns(UserWarning):
        again, _ = models.imagenet_resnet18(cache_dir=tmp_path, allow_download=False, seed=4)
    assert torch.equal(model.conv1.weight, again.conv1.weight)


def test_failed_download_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_reachable", lambda url, timeout: "host unreachable (test)")
    with pytest.warns(UserWarning, match="host unreachable"):
        _, info = models.imagenet_resnet18(cache_dir=tmp_path, allow_download=True)
    assert info.source == models.RANDOM_INIT_SOURCE and "host unreachable" in info.note


def test_a_hanging_connection_is_abandoned(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)  # a DNS lookup or SYN that never answers, for longer than the timeout
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    why = models._reachable(models.RESNET18_URL, timeout=0.2)
    assert time.perf_counter() - start < 1.5
    assert "did not answer within 0.2 s" in why


def test_imagenet_features_have_the_documented_shapes():
    model = models.ImageNetResNet18(size=64).eval()  # 64 px keeps the test fast; shapes scale
    got = features.extract(model, torch.zeros(2, 1, 28, 28, dtype=torch.uint8), ["layer1", "layer4", "avgpool"])
    assert got["layer1"].shape == (2, 64 * 16 * 16) and got["layer4"].shape == (2, 512 * 2 * 2)
    assert got["avgpool"].shape == (2, 512)


# --------------------------------------------------------------------------------------------
# ResNet-18 trained on Fashion-MNIST


def test_fashion_resnet_shapes_and_keywords():
    model = models.MODELS["resnet18"](dropout=0.2, kernel_size=5)
    assert model.conv1.kernel_size == (5, 5) and model.conv1.in_channels == 1 and model.dropout.p == 0.2
    got = features.extract(model, torch.zeros(2, 1, 28, 28, dtype=torch.uint8), ["layer1", "layer2", "layer3", "layer4", "fc"])
    assert [got[k].shape[1] for k in got] == [64 * 28 * 28, 128 * 14 * 14, 256 * 7 * 7, 512 * 4 * 4, 10]
    with pytest.raises(ValueError, match="kernel_size"):
        models.FashionResNet18(kernel_size=4)
    with pytest.raises(ValueError, match="dropout"):
        models.FashionResNet18(dropout=1.0)


def test_resnet_preset_is_the_notebooks_recipe():
    config = train.preset("resnet", epochs=2, seed=3)
    assert (config.model, config.dropout, config.optimizer, config.schedule) == ("resnet18", 0.0, "sgd", "onecycle")
    assert (config.lr, config.momentum, config.nesterov, config.weight_decay) == (0.05, 0.9, True, 5e-4)
    assert (config.epochs, config.seed, config.batch_size) == (2, 3, 128)
    assert isinstance(train.build_model(config), models.FashionResNet18)


def test_fashion_resnet_trains_with_the_kit(tmp_path):
    config = train.TrainConfig(model="resnet18", dropout=0.0, epochs=1, batch_size=4, lr=0.01, device="cpu", precision="fp32")
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=generator)
    y = torch.arange(8) % 10
    model = train.build_model(config)
    assert isinstance(model, models.FashionResNet18)
    history = train.fit(model, x, y, config, progress=False, checkpoint=tmp_path / "resnet.pt")
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    loaded, loaded_config, _ = train.load_checkpoint(tmp_path / "resnet.pt")
    assert loaded_config.model == "resnet18" and isinstance(loaded, models.FashionResNet18)


# --------------------------------------------------------------------------------------------
# The notebook, offline: the fallback is labelled in its output, results and report section


@pytest.mark.slow
def test_notebook_labels_the_offline_fallback(tmp_path, monkeypatch):
    import json

    import papermill

    from fmnist_utils import data, paths, provenance, report

    root = paths.project_root()
    run = tmp_path / "run"
    # A tiny CNN checkpoint and the results that point to it, as 02_train leaves them, so the notebook trains none.
    ds = data.load_fashion_mnist(download_ok=False)
    idx = torch.from_numpy(data.stratified_subset(ds.y_train, 64, seed=0))
    config = train.TrainConfig(epochs=1, batch_size=32, device="cpu")
    train.fit(train.build_model(config), ds.x_train[idx], ds.y_train[idx], config, progress=False,
              checkpoint=run / "02_train" / "checkpoint.pt")
    provenance.write_json(run / "02_train" / "results.json", {"notebook": "02_train", "checkpoint": "checkpoint.pt"})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached weights, whatever this machine has
    executed = tmp_path / "03_resnet_compare.ipynb"
    papermill.execute_notebook(
        root / "notebooks" / "03_resnet_compare.ipynb", executed,
        parameters={"profile": "smoke", "run_dir": str(run), "overrides": {"compare.allow_download": False}},
        cwd=root / "notebooks", progress_bar=False,
    )
    outputs = json.dumps(json.loads(executed.read_text())["cells"])
    assert "WARNING: RANDOM INIT (offline fallback: no ImageNet weights)" in outputs
    results = json.loads((run / "03_resnet_compare" / "results.json").read_text())
    assert results["weights_source"] == models.RANDOM_INIT_SOURCE and not results["pretrained"]
    assert results["cnn"]["source"] == "02_train checkpoint"
    for name in ("fig2_matrices", "matrix_definitions", "layer_curves", "cka", "probes"):
        assert (run / "03_resnet_compare" / results["figures"][name]).is_file()
    # One label everywhere the network is named: verdicts, table rows, CKA layer names.
    label = results["resnet_title"]
    assert "RANDOM INIT" in label and results["resnet"]["title"] == label
    verdicts = results["verdicts"]
    assert {"matrix_agreement", "separation", "cka_vs_pixels", "probe_cnn_vs_pixels", "probe_cnn_vs_resnet"} <= set(verdicts)
    for key, verdict in verdicts.items():
        assert verdict["key"] == key and verdict["verdict"] and verdict["test"]
        assert verdict["claim"].count("ResNet") == verdict["claim"].count(label)  # never a bare "ResNet-18"
    assert label in verdicts["matrix_agreement"]["claim"] and 0 < verdicts["matrix_agreement"]["p"] <= 1
    assert all(label == row["network"] for row in results["layer_curves"] if row["model"] == "ResNet-18")
    assert all(label in name for name in results["cka"]["cols"][1:])
    stamp = {"notebook": "03_resnet_compare", "source": str(executed), "executed_notebook": str(executed),
             "seconds": results["seconds"], "executed": True, "status": "ok", "finished_utc": ""}
    html = report.render(run, [stamp])
    section = html.split('<section id="03_resnet_compare"', 1)[1].split("</section>")[0]
    assert '<p class="warning"><strong>RANDOM INIT (offline fallback: no ImageNet weights).</strong>' in section
    assert section.count("RANDOM INIT (offline fallback: no ImageNet weights)") >= 5  # figure captions too
    # Named in full in the heading, the notice and the captions; elsewhere the short tag, never a bare "ResNet-18".
    assert "random-init ResNet-18" in section and not report.equality_claims(section)

    # The same results as a machine with the weights would write them: no warning, the source named,
    # and the network's one label (in titles, rows and verdicts) the pretrained one.
    digest = "ab" * 32
    results = json.loads(json.dumps(results).replace(label, models.model_title(models.CACHE_SOURCE)))
    results.update(weights_source=models.CACHE_SOURCE, pretrained=True)
    results["weights"].update(source=models.CACHE_SOURCE, pretrained=True, sha256=digest, verified=True)
    (run / "03_resnet_compare" / "results.json").write_text(json.dumps(results))
    section = report.render(run, [stamp]).split('<section id="03_resnet_compare"', 1)[1].split("</section>")[0]
    assert "RANDOM INIT" not in section and 'class="warning"' not in section
    assert f"{models.CACHE_SOURCE}, SHA-256 <code>{digest[:16]}" in section and "ResNet-18 (ImageNet)" in section
    assert "torchvision's ImageNet file (checked in full)" in section

    # A file the user trusted but that is not torchvision's: a notice that says so, never "ImageNet".
    results["weights"].update(source=models.USER_SUPPLIED_SOURCE, verified=False)
    results.update(weights_source=models.USER_SUPPLIED_SOURCE)
    (run / "03_resnet_compare" / "results.json").write_text(json.dumps(results))
    section = report.render(run, [stamp]).split('<section id="03_resnet_compare"', 1)[1].split("</section>")[0]
    assert f'<p class="warning"><strong>{models.USER_SUPPLIED_SOURCE}.</strong>' in section
    assert "is not torchvision's ImageNet file" in section and "checked in full" not in section


def test_model_tag_names_the_network_short_but_never_bare():
    assert models.model_tag(models.RANDOM_INIT_SOURCE) == "random-init ResNet-18"
    for source in (models.CACHE_SOURCE, models.DOWNLOAD_SOURCE, models.LOCAL_SOURCE.format(path="/w.pth")):
        assert models.model_tag(source) == models.model_title(source) == "ResNet-18 (ImageNet)"
    assert models.model_tag("user-supplied weights (not verified as ImageNet)") == "ResNet-18 (user-supplied weights)"
    # The long form is given once; the tag then replaces it and any bare name in a record's words.
    long = models.model_title(models.RANDOM_INIT_SOURCE)
    record = {"claim": f"the CNN and {long} agree", "statistic": "CNN minus ResNet-18", "test": "t", "value": 1.0}
    tagged = report.retag(record, long, report.network_tag(models.RANDOM_INIT_SOURCE))
    assert tagged["claim"] == "the CNN and random-init ResNet-18 agree"
    assert tagged["statistic"] == "CNN minus random-init ResNet-18" and tagged["value"] == 1.0
