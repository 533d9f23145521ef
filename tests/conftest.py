"""Settings shared by every test directory.

Hypothesis: the suite asserts properties, never timings (speed lives in `bench/`). Its
`too_slow` health check and per-example `deadline` are wall-clock measurements of data
generation and of one example; on a loaded CI machine (two cores shared with the e2e
sandboxes' processes) they fail a correct test at random. The profile turns both off for
every property test; the number of examples stays what each test asks for.
"""
from hypothesis import HealthCheck, settings

settings.register_profile("ambit", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ambit")
