"""D, the parameters of each model on each data set, known without building the model:
config validation and the cost model read it torch-free (tests/test_cost.py checks every
entry against the built models)."""

NUM_PARAMS = {
    ("fc", "1x28x28"): 101_770,
    ("fc", "3x32x32"): 394_634,
    ("cnn", "1x28x28"): 93_322,
    ("cnn", "3x32x32"): 122_570,
    ("resnet8", "1x28x28"): 78_042,
    ("resnet8", "3x32x32"): 78_330,
    ("fc2x200", "1x28x28"): 199_210,
    ("fc2x200", "3x32x32"): 656_810,
    ("lenet", "1x28x28"): 44_426,
    ("lenet", "3x32x32"): 62_006,
}
INPUT = {"mnist5k": "1x28x28", "mnist": "1x28x28", "fashion_mnist": "1x28x28", "cifar10": "3x32x32"}


def num_params(model: str, dataset: str) -> int:
    return NUM_PARAMS[(model, INPUT[dataset])]
