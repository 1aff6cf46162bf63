"""The cache keys of the book's classifiers and NEMs stay what they are: hours of training are
stored under them (``<cache>/classifiers/<key>.*`` and ``<cache>/nems/<classifier key>-<kind>-<digest>/``).

The classifier keys were computed from the code as it stood before the cache moved into ranem.zoo
(commit f51c6ab), the gpu ones since gpu mode went offline (EfficientNet-Lite2 from its wheel, a
ViT-Tiny trained here, the budget of one GPU run), the NEM digests since NEM_CACHE_VERSION 2 added
the decoder's design to the spec, the synthetic ones since their classifier stops training at the
first epoch that reaches the validation accuracy ``synthetic_stop_at`` (95%).
A change that must retrain on purpose bumps CACHE_VERSION or NEM_CACHE_VERSION and updates these
values in the same commit; any other change of them is a bug. Computing a key needs no
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
    "quick/synthetic/cnn": "synthetic-resnet10t-fe9271f326ac",
    "quick/synthetic/vit": "synthetic-vit_tiny_patch16_224-c7a3135410ae",
    "cpu/imagenette/cnn": "imagenette-tf_efficientnet_lite0-38c49fe02275",
    "cpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-60afee40064f",
    "cpu/synthetic/cnn": "synthetic-resnet10t-e30c0e73514e",
    "cpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-b53c087efd37",
    "gpu/imagenette/cnn": "imagenette-tf_efficientnet_lite2-d3f324af0694",
    "gpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-814cc90b2887",
    "gpu/synthetic/cnn": "synthetic-resnet10t-74b068925311",
    "gpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-9f4f19dc381a",
}
NEM_DIGESTS = {
    "quick/imagenette/cnn/ranem": "adfbba41e909",
    "quick/imagenette/cnn/nemt": "d74acf86bf23",
    "quick/imagenette/cnn/ranem_insdel": "c2c60e760339",
    "quick/imagenette/vit/ranem": "b6cc85ad4f50",
    "quick/imagenette/vit/nemt": "e4e6845d84e3",
    "quick/imagenette/vit/ranem_insdel": "e34cb394410c",
    "quick/synthetic/cnn/ranem": "337ad6945892",
    "quick/synthetic/cnn/nemt": "79cead4b09de",
    "quick/synthetic/cnn/ranem_insdel": "45a51e9b16a7",
    "quick/synthetic/vit/ranem": "528d4ce7f9d7",
    "quick/synthetic/vit/nemt": "5fa75302fcee",
    "quick/synthetic/vit/ranem_insdel": "37711d53459d",
    "cpu/imagenette/cnn/ranem": "dcbe204873b0",
    "cpu/imagenette/cnn/nemt": "a3da03e90d30",
    "cpu/imagenette/cnn/ranem_insdel": "b04720a30671",
    "cpu/imagenette/vit/ranem": "487b33105d41",
    "cpu/imagenette/vit/nemt": "fdbacb3842e3",
    "cpu/imagenette/vit/ranem_insdel": "c00f4520df19",
    "cpu/synthetic/cnn/ranem": "402a4c325df9",
    "cpu/synthetic/cnn/nemt": "712f40c55e33",
    "cpu/synthetic/cnn/ranem_insdel": "2c3f2f3c89da",
    "cpu/synthetic/vit/ranem": "d8274c4fafee",
    "cpu/synthetic/vit/nemt": "e831a05f7e21",
    "cpu/synthetic/vit/ranem_insdel": "81c34b8da196",
    "gpu/imagenette/cnn/ranem": "f5cca8261ddc",
    "gpu/imagenette/cnn/nemt": "3f4ea953c3b9",
    "gpu/imagenette/cnn/ranem_insdel": "f53f74f68ac1",
    "gpu/imagenette/vit/ranem": "fa3acf230777",
    "gpu/imagenette/vit/nemt": "23980bae57de",
    "gpu/imagenette/vit/ranem_insdel": "c2c2fd436fb2",
    "gpu/synthetic/cnn/ranem": "3167932c2db7",
    "gpu/synthetic/cnn/nemt": "3af2e5946509",
    "gpu/synthetic/cnn/ranem_insdel": "f86025325144",
    "gpu/synthetic/vit/ranem": "d507b11b8d86",
    "gpu/synthetic/vit/nemt": "a773dbb4b83b",
    "gpu/synthetic/vit/ranem_insdel": "10088882c063",
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
