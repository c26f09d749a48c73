"""The trial hand-off: from the YAML to the loss, one typed object (TrialSettings), one serialised form."""

import pickle

import yaml

from banray.catalog import losses
from banray.spec import ResourcesSpec, TrialSettings, parse_spec
from banray.training.loop import train_loop
from banray.trial import wire
from banray.trial.trainable import read_trial
from conftest import tiny_spec
from test_worker import RecordingSession

SPEC = """
name: handoff
data: {dataset: synthetic}
model: {arch: cnn, kwargs: {width: 8}}
train: {epochs: 2, lr: 0.05}
distill: {objective: kd, temperature: 3.5, alpha: 0.25}
generations: 1
"""


def trial_config(spec, generation=1, **searched):
    """A trial's Tune config as its group builds it (the generation's settings and its ticket under the wire),
    with the search's values and the trial number beside them as Tune sets them."""
    settings = spec.generation_settings(0, generation, "/teacher" if generation else None)
    ticket = wire.Ticket(chain=0, generation=generation, arm="main", metric="val_error", train_storage="/train",
                         slots_actor="slots", resources=ResourcesSpec().model_dump(mode="json"))
    beside = {}
    for key, value in searched.items():
        section, name = key.split(".")
        del settings[section][name]
        beside.setdefault(section, {})[name] = value
    return {**wire.group_config(settings, ticket, {}), **beside, wire.TRIAL: 1}


def test_the_temperature_reaches_the_loss_as_written_in_the_yaml():
    spec = parse_spec(yaml.safe_load(SPEC))
    settings = read_trial(trial_config(spec)).settings
    params = settings.distill.loss_params()
    assert isinstance(params, losses.LossParams)
    assert (params.temperature, params.alpha) == (3.5, 0.25) == (spec.distill.temperature, spec.distill.alpha)


def test_a_trials_settings_round_trip_unchanged_through_every_hand_off():
    spec = parse_spec(yaml.safe_load(SPEC))
    settings = read_trial(trial_config(spec, **{"distill.temperature": 6.0})).settings
    assert settings.distill.temperature == 6.0 and settings.generation == 1 and settings.trial == 1
    # To Ray Train's workers (its one serialised form) and through Ray's pickling, nothing changes.
    assert TrialSettings.model_validate(settings.model_dump(mode="json")) == settings
    assert pickle.loads(pickle.dumps(settings)) == settings
    # The group's process reads the same config back to the same object (it names the trial's MLflow run).
    assert read_trial(trial_config(spec, **{"distill.temperature": 6.0})).settings == settings


def test_loss_parameters_are_built_once_per_trial(monkeypatch):
    built = []
    real = losses.LossParams.__init__

    def counting(self, *args, **kwargs):
        built.append(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(losses.LossParams, "__init__", counting)
    spec = parse_spec(tiny_spec(**{"train.epochs": 2}))
    settings = read_trial(trial_config(spec, generation=0)).settings
    train_loop(settings, RecordingSession())
    assert len(built) == 1  # not once per step
