"""The TRL adapter's config: the service's base advantage is made to agree with TRL's."""

import pytest
from pydantic import ValidationError

from amr_client import ScoringConfig
from amr_client.integrations.trl import _trl_matched_config


def test_base_advantage_fields_follow_trl():
    # TRL: (r - mean) / (unbiased std + 1e-4) for scale_rewards="group", r - mean for "none".
    assert _trl_matched_config(None, norm_by_std=True) == \
        {"std_eps": 1e-4, "std_unbiased": True, "norm_by_std": True}
    assert _trl_matched_config({"decay_steps": 10}, norm_by_std=False) == \
        {"decay_steps": 10, "std_eps": 1e-4, "std_unbiased": True, "norm_by_std": False}


def test_a_scoring_config_model_sends_only_the_fields_it_set():
    config = _trl_matched_config(ScoringConfig(tau_pos=0.5), norm_by_std=True)
    assert config == {"tau_pos": 0.5, "std_eps": 1e-4, "std_unbiased": True, "norm_by_std": True}


def test_a_conflicting_base_advantage_field_names_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"amr_config.std_eps=1e-06 .*TRL uses 0.0001"):
        _trl_matched_config({"std_eps": 1e-6}, norm_by_std=True)
    with pytest.raises(ValueError, match=r"amr_config.norm_by_std=False .*set GRPOConfig.scale_rewards"):
        _trl_matched_config({"norm_by_std": False}, norm_by_std=True)


def test_an_unknown_field_fails_at_construction():
    with pytest.raises(ValidationError, match="tau"):
        _trl_matched_config({"tau": 1.0}, norm_by_std=True)
