"""Make TRL 0.24's optional-dependency flags real booleans under transformers 5.

TRL 0.24 caches ``transformers.utils.import_utils._is_package_available(name)`` in module-level
flags (``trl.import_utils._mergekit_available``, ``_weave_available``, ...) and treats them as
booleans.  In transformers 5 that helper returns a tuple ``(found, version)``, and ``(False, None)``
is truthy, so every optional package looks installed: ``from trl import DPOTrainer`` then fails on
``import mergekit`` (``trl/mergekit_utils.py``), then on ``import weave``.  SFTTrainer's import path
happens not to touch those flags, which is why SFT works with the same pins.

There is no setting for this, so :func:`fix_optional_dependency_flags` rewrites each tuple-valued
flag to its first element, the boolean TRL expects.  It changes nothing when the flags are already
booleans; TRL replaced the helper with its own (huggingface/trl#5129), so this module can go when the
pins move past that release.  Call it before importing a TRL trainer that needs it.

TRL 0.24's DPOTrainer also writes ``model.warnings_issued["estimate_tokens"]``, a dict that
transformers 5 models no longer have (nothing in transformers 5 reads it); :func:`give_warnings_issued`
gives our model that empty dict before the trainer is built.
"""

from __future__ import annotations


def fix_optional_dependency_flags() -> list[str]:
    """Coerce ``trl.import_utils._*_available`` tuples to booleans; returns the names changed."""
    import trl.import_utils as flags

    changed = []
    for name, value in list(vars(flags).items()):
        if name.startswith("_") and name.endswith("_available") and isinstance(value, tuple):
            setattr(flags, name, bool(value[0]))
            changed.append(name)
    return changed


def give_warnings_issued(model) -> None:
    """Add the empty ``warnings_issued`` dict TRL 0.24 writes to, when the model lacks it."""
    if not isinstance(getattr(model, "warnings_issued", None), dict):
        model.warnings_issued = {}
