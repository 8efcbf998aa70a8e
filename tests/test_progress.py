"""The progress line's rates: counted between readings, and never negative when a learner restarts behind."""

from deploy.progress import Throughput


def test_rates_after_a_learner_restart_count_from_its_checkpoint():
    counters = Throughput()
    counters.updates, counters.env_steps = 250, 1000
    counters.rates()
    counters.restart_updates(145)  # the new learner resumed from a checkpoint at update 145
    counters.updates += 30
    env_rate, update_rate = counters.rates()
    assert update_rate > 0 and env_rate == 0
    counters.updates += 10
    assert counters.rates()[1] > 0 and counters.updates == 185
