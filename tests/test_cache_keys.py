"""The cache keys of the book's classifiers and NEMs stay what they are: hours of training are
stored under them (``<cache>/classifiers/<key>.*`` and ``<cache>/nems/<classifier key>-<kind>-<digest>/``).

The values below were computed from the code as it stood before the cache moved into ranem.zoo
(commit f51c6ab); the gpu values since gpu mode went offline (EfficientNet-Lite2 from its
wheel, a ViT-Tiny trained here, the budget of one GPU run). A change that must retrain on purpose bumps CACHE_VERSION or NEM_CACHE_VERSION and updates
these values in the same commit; any other change of them is a bug. Computing a key needs no
training, no data and no network, so every run mode is checked, not only the quick one.
"""
import pytest

from ranem import config
from ranem.zoo import cache_key, classifier_spec, nem_key, nem_spec

CASES = [(mode, dataset, kind) for mode in config.MODES for dataset in ("imagenette", "synthetic")
         for kind in ("cnn", "vit")]
NEM_KINDS = ("ranem", "nemt", "ranem_insdel")

CLASSIFIER_KEYS = {
    "quick/imagenette/cnn": "imagenette-tf_efficientnet_lite0-432baae5d2dd",
    "quick/imagenette/vit": "imagenette-vit_tiny_patch16_224-7658cc8235d4",
    "quick/synthetic/cnn": "synthetic-resnet10t-834bad32bf26",
    "quick/synthetic/vit": "synthetic-vit_tiny_patch16_224-632abafef0e4",
    "cpu/imagenette/cnn": "imagenette-tf_efficientnet_lite0-38c49fe02275",
    "cpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-60afee40064f",
    "cpu/synthetic/cnn": "synthetic-resnet10t-c64802b9198a",
    "cpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-4be78bef0e61",
    "gpu/imagenette/cnn": "imagenette-tf_efficientnet_lite2-d3f324af0694",
    "gpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-814cc90b2887",
    "gpu/synthetic/cnn": "synthetic-resnet10t-b48f689e660b",
    "gpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-78c55cfdd306",
}
NEM_DIGESTS = {
    "quick/imagenette/cnn/ranem": "8603cbf99888",
    "quick/imagenette/cnn/nemt": "15875397bd8b",
    "quick/imagenette/cnn/ranem_insdel": "54655e3488a8",
    "quick/imagenette/vit/ranem": "25cd09e73081",
    "quick/imagenette/vit/nemt": "8792f4254b5f",
    "quick/imagenette/vit/ranem_insdel": "18eedb806f27",
    "quick/synthetic/cnn/ranem": "c0a7ddb05c3d",
    "quick/synthetic/cnn/nemt": "79b0851f7b13",
    "quick/synthetic/cnn/ranem_insdel": "51a874ee06d4",
    "quick/synthetic/vit/ranem": "15e85aefc507",
    "quick/synthetic/vit/nemt": "61c396139194",
    "quick/synthetic/vit/ranem_insdel": "14ae55dda85a",
    "cpu/imagenette/cnn/ranem": "3aed4fe12463",
    "cpu/imagenette/cnn/nemt": "5b0297961314",
    "cpu/imagenette/cnn/ranem_insdel": "e8d766bbf21f",
    "cpu/imagenette/vit/ranem": "84c97b66899a",
    "cpu/imagenette/vit/nemt": "ca158deaaebe",
    "cpu/imagenette/vit/ranem_insdel": "fa4fa626d0f6",
    "cpu/synthetic/cnn/ranem": "7e874da11895",
    "cpu/synthetic/cnn/nemt": "6f953458628c",
    "cpu/synthetic/cnn/ranem_insdel": "375b8fd22f82",
    "cpu/synthetic/vit/ranem": "9687c070fb38",
    "cpu/synthetic/vit/nemt": "90afacd4323b",
    "cpu/synthetic/vit/ranem_insdel": "5fa2d042158f",
    "gpu/imagenette/cnn/ranem": "3dd23eda5baa",
    "gpu/imagenette/cnn/nemt": "440962a01da6",
    "gpu/imagenette/cnn/ranem_insdel": "2736d79468aa",
    "gpu/imagenette/vit/ranem": "1de4acc72f7d",
    "gpu/imagenette/vit/nemt": "141e96e6f69f",
    "gpu/imagenette/vit/ranem_insdel": "f2bb18a35bed",
    "gpu/synthetic/cnn/ranem": "379cfa29b498",
    "gpu/synthetic/cnn/nemt": "08227d9e8a18",
    "gpu/synthetic/cnn/ranem_insdel": "c9f6d3ad2b33",
    "gpu/synthetic/vit/ranem": "f17bf6090a20",
    "gpu/synthetic/vit/nemt": "6f89b17440e4",
    "gpu/synthetic/vit/ranem_insdel": "b4b8a17ffcfb",
}


def nem_folder(kind, mode, dataset, classifier):
    """The folder name ``get_nem`` gives the NEM of ``kind`` for the classifier of ``classifier``."""
    s = config.settings(mode)
    spec = classifier_spec(classifier, dataset, s)
    key = cache_key(spec)
    return nem_key(key, kind, nem_spec(kind, key, dataset, s, image_size=spec["image_size"]))


@pytest.mark.parametrize("mode,dataset,kind", CASES)
def test_classifier_cache_keys_are_pinned(mode, dataset, kind):
    spec = classifier_spec(kind, dataset, config.settings(mode))
    assert cache_key(spec) == CLASSIFIER_KEYS[f"{mode}/{dataset}/{kind}"]


@pytest.mark.parametrize("nem", NEM_KINDS)
@pytest.mark.parametrize("mode,dataset,kind", CASES)
def test_nem_cache_folders_are_pinned(mode, dataset, kind, nem):
    case = f"{mode}/{dataset}/{kind}"
    expected = f"{CLASSIFIER_KEYS[case]}-{nem}-{NEM_DIGESTS[f'{case}/{nem}']}"
    assert nem_folder(nem, mode, dataset, kind) == expected
