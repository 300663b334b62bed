"""The feature cache: frozen-backbone features computed once and read by every trial that needs them.

A family that writes nothing back into its backbone (``SideNet.cacheable``: linear, LoSA, ...) reads named features
(``SideNet.feature_taps``) that no trial choice changes. The first trial that needs them computes them on its node and
stores each (split, tap) as a memory-mapped ``.npy`` file on local disk (:mod:`autoside.cache.store`); every later
trial on that node trains its side network on the stored features alone (:mod:`autoside.cache.features`), so the
search pays for the backbone once instead of once per trial.
"""

from autoside.cache.features import CacheInfo, use_cache
from autoside.cache.store import FeatureStore, default_cache_dir

__all__ = ["CacheInfo", "FeatureStore", "default_cache_dir", "use_cache"]
