"""The data dir's storage as a dependency: routes ask for it, not for the settings."""

from typing import Annotated

from fastapi import Depends

from app.core.deps import SettingsDep
from app.storage.local import LocalStorage


def get_storage(settings: SettingsDep) -> LocalStorage:
    return LocalStorage(settings)


StorageDep = Annotated[LocalStorage, Depends(get_storage)]
