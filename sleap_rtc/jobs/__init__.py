"""Job descriptions shared by the client, the API and SLEAP's dialog.

>>> from sleap_rtc.jobs import TrainJobSpec
>>> TrainJobSpec(config_content="a: 1\\n", labels_path="/mnt/lab/l.slp").validate()
[]
"""

from sleap_rtc.jobs.spec import TrainJobSpec

__all__ = ["TrainJobSpec"]
