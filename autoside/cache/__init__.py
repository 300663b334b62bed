"""The feature cache: frozen-backbone features computed once and read by every trial that needs them.

A family that writes nothing back into its backbone (``SideNet.cacheable``: linear, LoSA, ...) reads named features
(``SideNet.feature_taps``) that no trial choice changes. The first trial that needs them computes them on its node and
stores each (split, tap) as a memory-mapped ``.npy`` file on local disk (:mod:`autoside.cache.store`); every later
trial on that node trains its side network on the stored features alone (:mod:`autoside.cache.features`), so the
search pays for the backbone once instead of once per trial. Once a node also holds the backbone's weights record
(:mod:`autoside.cache.backbone`), such a trial does not even load the backbone (:mod:`autoside.cache.trial`).
"""

from autoside.cache.entries import BackboneNeeded, CacheInfo
from autoside.cache.features import use_cache
from autoside.cache.store import FeatureStore, default_cache_dir
from autoside.cache.trial import side_net_on_record

__all__ = ["BackboneNeeded", "CacheInfo", "FeatureStore", "default_cache_dir", "side_net_on_record", "use_cache"]
