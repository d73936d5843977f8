import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from makemore import config
from makemore.errors import MakemoreError
from makemore.models import MODELS
from makemore.training.config import TrainConfig


@dataclass
class Example:
    size: int = config.field(4, "a size")
    rate: float | None = config.field(None, "a rate")
    name: str = config.field("a", "a name", choices=("a", "b"))
    flag: bool = config.field(False, "a flag")

    def __post_init__(self):
        config.check(self.size > 0, "size must be > 0")


def test_fields_become_kebab_case_flags():
    parser = argparse.ArgumentParser()
    config.add_flags(parser, Example)
    args = parser.parse_args(["--size", "8", "--rate", "0.5", "--name", "b", "--flag"])
    assert config.from_namespace(Example, args) == Example(8, 0.5, "b", True)
    assert config.from_namespace(Example, parser.parse_args([])) == Example()


def test_from_dict_validates():
    assert config.from_dict(Example, {"size": 3, "rate": 1}) == Example(3, 1.0)
    for bad in ({"nope": 1}, {"size": "3"}, {"size": True}, {"size": 0}, []):
        with pytest.raises(MakemoreError):
            config.from_dict(Example, bad)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_config_round_trips_and_no_flag_clashes_with_training(name):
    spec = MODELS[name]
    default = spec.config_class()
    assert config.from_dict(spec.config_class, config.to_dict(default)) == default
    parser = argparse.ArgumentParser()
    config.add_flags(parser, TrainConfig)
    config.add_flags(parser, spec.config_class)  # argparse raises on a clashing flag
    config.replace(TrainConfig(), **spec.train_defaults)


@pytest.mark.parametrize("model, preset", [(name, preset) for name, spec in MODELS.items() for preset in spec.presets])
def test_every_preset_names_real_settings(model, preset):
    spec = MODELS[model]
    chosen = spec.presets[preset]
    model_config = config.replace(spec.config_class(), **chosen.model)
    train_config = config.replace(config.replace(TrainConfig(), **spec.train_defaults), **chosen.train)
    assert all(getattr(model_config, key) == value for key, value in chosen.model.items())
    assert all(getattr(train_config, key) == value for key, value in chosen.train.items())


def test_help_shows_choices_and_special_words():
    @dataclass
    class Choosy:
        optimizer: str = config.field("adamw", "optimizer", choices=("adamw", "sgd"))
        order: int = config.field(0, "order", names={"auto": 0})

    parser = argparse.ArgumentParser()
    config.add_flags(parser, Choosy)
    shown = parser.format_help()
    assert "--optimizer {adamw,sgd}" in shown and "--order INT|auto" in shown and "(default: auto)" in shown
    assert config.from_namespace(Choosy, parser.parse_args(["--order", "auto"])) == Choosy()


def test_check_messages_name_flags_not_fields():
    with pytest.raises(MakemoreError, match=r"^--size must be > 0$"):
        config.replace(Example(), size=0)
    with pytest.raises(MakemoreError, match=r"^unknown setting\(s\) --colour$"):
        config.replace(Example(), colour="red")
    assert config.flag_words("max_steps of the step schedule; --n-embd, add-k", TrainConfig) == (
        "--max-steps of the step --schedule; --n-embd, add-k"
    )


@pytest.mark.parametrize("name", ["bigram", "mlp", "wavenet", "rnn", "ngram"])
def test_model_config_messages_name_flags(name):
    config_class = MODELS[name].config_class
    numbers = [f.name for f in dataclasses.fields(config_class) if f.type in ("int", "float", int, float)]
    for field_name in numbers:
        with pytest.raises(MakemoreError) as error:
            config.replace(config_class(), **{field_name: -(10**9)})
        assert "_" not in str(error.value).split(" must ")[0], str(error.value)  # --n-embd, never n_embd
