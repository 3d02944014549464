"""The steps of 03_resnet_compare, at tiny size: layers, the CNN to compare, probes, the Fashion-MNIST ResNet-18."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from fmnist_utils import compare, correlation, features, models, provenance, train


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    x[torch.arange(n), 0, y * 2, :] = 255  # a class-dependent stripe, so probes have something to find
    return x, y


@pytest.mark.parametrize("name, model", [("seedcnn", lambda: models.SeedCNN()),
                                         ("resnet18", lambda: models.FashionResNet18()),
                                         ("imagenet_resnet18", lambda: models.ImageNetResNet18())])
def test_representation_layers_are_layers_of_the_model_in_forward_order(name, model):
    layers = compare.representation_layers(name)
    names = features.layer_names(model())
    assert set(layers) <= set(names)
    assert [names.index(n) for n in layers] == sorted(names.index(n) for n in layers)


def test_representation_layers_refuse_an_unknown_model_or_layer():
    assert compare.representation_layers("seedcnn", "fc2")[-1] == "fc2"
    with pytest.raises(ValueError, match=r"'conv9'.*choose one of \['block1'"):
        compare.representation_layers("seedcnn", "conv9")
    with pytest.raises(ValueError, match="no representation layers known for model 'vgg'"):
        compare.representation_layers("vgg")


def test_representations_keep_order_keys_and_time_each_network():
    x, _ = _images(20)
    cnn = models.SeedCNN().eval()
    reps, seconds = compare.representations({"pixels": None, "CNN": (cnn, ["block1", "fc2"])}, x, batch_size=8)
    assert list(reps) == [("pixels", "pixels"), ("CNN", "block1"), ("CNN", "fc2")]
    assert_allclose(reps[("pixels", "pixels")].numpy(), x.reshape(20, -1).float().numpy())
    assert_allclose(reps[("CNN", "fc2")].numpy(), features.extract_layer(cnn, x, "fc2").numpy(), rtol=1e-5, atol=1e-6)
    assert set(seconds) == {"pixels", "CNN"} and all(s >= 0 for s in seconds.values())


def test_probe_layers_match_a_direct_probe_and_mark_each_image():
    x_fit, y_fit = _images(80, seed=1)
    x_score, y_score = _images(40, seed=2)
    cnn = models.SeedCNN().eval()
    probes, correct = compare.probe_layers({"pixels": None, "cnn": (cnn, "fc2")}, x_fit, y_fit, x_score, y_score, seed=3)
    direct = features.linear_probe(x_fit.reshape(80, -1).float(), y_fit, x_score.reshape(40, -1).float(), y_score, seed=3)
    assert probes["pixels"]["test_accuracy"] == direct["test_accuracy"]
    assert_allclose(correct["pixels"], direct["test_predictions"] == y_score.numpy())
    for name in ("pixels", "cnn"):
        assert "test_predictions" not in probes[name]
        assert correct[name].shape == (40,) and correct[name].dtype == bool
        assert correct[name].mean() == pytest.approx(probes[name]["test_accuracy"])


def test_cnn_to_compare_trains_the_study_recipe_when_02_has_not_run(tmp_path, capsys):
    x, y = _images(60)
    model, config, checkpoint, source = compare.cnn_to_compare(tmp_path, tmp_path / "out", x, y, epochs=1, subset=30,
                                                               seed=4, device="cpu")
    assert "trained here" in source and checkpoint == tmp_path / "out" / "cnn_checkpoint.pt" and checkpoint.is_file()
    assert "training the CNN here on 30 images for 1 epoch(s)" in capsys.readouterr().out
    study = train.preset("study")
    assert (config.lr, config.batch_size, config.dropout, config.epochs, config.seed) == (study.lr, study.batch_size,
                                                                                         study.dropout, 1, 4)
    assert not model.training


def test_cnn_to_compare_reads_02s_checkpoint(tmp_path):
    x, y = _images(40)
    config = train.preset("study", epochs=1, batch_size=20, device="cpu")
    trained = tmp_path / "02_train"
    trained.mkdir()
    train.fit(train.build_model(config), x, y, config, checkpoint=trained / "cnn.pt")
    provenance.write_json(trained / "results.json", {"notebook": "02_train", "checkpoint": "cnn.pt"})
    model, loaded, checkpoint, source = compare.cnn_to_compare(tmp_path, tmp_path / "03", x, y, epochs=5, subset=None)
    assert checkpoint == trained / "cnn.pt" and source == "02_train checkpoint"
    assert loaded == config and not (tmp_path / "03").exists()


def test_fmnist_resnet18_trains_and_describes_itself_against_the_references(tmp_path):
    x, y = _images(40)
    x_sample, labels = _images(30, seed=5)
    probe_data = (*_images(40, seed=6), *_images(20, seed=7))
    ref_features = torch.randn(30, 7, generator=torch.Generator().manual_seed(0))
    ref_matrix = correlation.class_correlation_matrix(ref_features, labels.numpy(), 10)
    config = train.preset("resnet", epochs=1, batch_size=20, device="cpu")
    record = compare.fmnist_resnet18(config, x, y, x_sample=x_sample, labels=labels.numpy(), probe_data=probe_data,
                                     references={"cnn": (ref_matrix, ref_features)}, checkpoint=tmp_path / "r.pt",
                                     batch_size=16)
    assert record["train_images"] == 40 and len(record["history"]) == 1 and record["config"] == config.to_dict()
    assert record["matrix"].shape == (10, 10)
    assert record["difference"] == pytest.approx(record["within"] - record["between"])
    assert record["spearman_vs_cnn"] == pytest.approx(correlation.compare_matrices(record["matrix"], ref_matrix))
    assert 0 <= record["cka_vs_cnn"] <= 1
    assert 0 <= record["test_accuracy"] <= 1 and record["probe"]["n_test"] == 20 and record["probe"]["n_features"] == 512
    assert np.isfinite(record["probe"]["test_accuracy"])
