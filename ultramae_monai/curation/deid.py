"""De-identification for curation: salted hashes instead of identifiers, and scrubbing of messages.

Nothing a curated set contains may identify a patient: not the DICOM PatientID or StudyInstanceUID,
and not the source path either (PACS exports and hand-made folders often name files after the
patient). Every identifier is replaced by a keyed hash (HMAC-SHA256 with a secret salt), so the same
patient always maps to the same token within one curated set (needed for a patient-grouped split),
while nobody without the salt can test a guessed ID against the tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path, PurePosixPath

from ultramae_monai.errors import InvalidInputError, UnreadableFileError

__all__ = ["SALT_ENV", "SALT_FILE", "Hasher", "redact_quoted", "resolve_salt", "scrub", "source_identity"]

SALT_ENV = "ULTRAMAE_SALT"
SALT_FILE = ".salt"
_CHECK_FILE = "salt.check"  # under OUT/state: a one-way fingerprint, to refuse mixing salts in one set
HASH_CHARS = 16  # 64 bits: collision-free for millions of patients, short enough for file names


class Hasher:
    """Keyed hashes of identifiers; ``domain`` separates patient, study, path... tokens of equal text."""

    def __init__(self, salt: bytes) -> None:
        if len(salt) < 16:
            raise InvalidInputError("the de-identification salt must be at least 16 bytes")
        self._salt = salt

    def __call__(self, value: str, domain: str) -> str:
        msg = f"{domain}\x00{value}".encode()
        return hmac.new(self._salt, msg, hashlib.sha256).hexdigest()[:HASH_CHARS]

    def fingerprint(self) -> str:
        """Identifies the salt without revealing it (an HMAC of a fixed message)."""
        return self("ultramae-salt-check", "salt")


def resolve_salt(out: str | os.PathLike, salt: str | None = None) -> bytes:
    """The salt: ``salt`` argument, else ``$ULTRAMAE_SALT``, else ``OUT/.salt`` (created, mode 0600).

    The chosen salt is checked against the fingerprint stored by an earlier run into ``out``, because
    resuming with another salt would scatter a patient over two tokens (and two splits).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    value = salt if salt is not None else os.environ.get(SALT_ENV)
    if value is not None:
        key = str(value).encode()
    else:
        path = out / SALT_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        key = path.read_text().strip().encode()
    hasher = Hasher(key)
    check = out / "state" / _CHECK_FILE
    if check.exists():
        if check.read_text().strip() != hasher.fingerprint():
            raise InvalidInputError(
                "this output folder was curated with a different salt; pass the same --salt / $ULTRAMAE_SALT "
                "(or curate into a new folder)",
                out,
            )
    else:
        check.parent.mkdir(parents=True, exist_ok=True)
        check.write_text(hasher.fingerprint())
    return key


def scrub(text: str, path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Remove a source path and every name along it from a message (error text, warnings)."""
    p = Path(path)
    names = {str(p), str(p.resolve()), p.name, p.stem, p.name.split(".")[0]}
    if root is not None:
        try:
            rel = PurePosixPath(p.resolve().relative_to(Path(root).resolve()))
            names.update({str(rel), *rel.parts})
        except ValueError:
            pass
    for name in sorted((n for n in names if len(n) >= 3), key=len, reverse=True):
        text = re.sub(re.escape(name), "<source>", text)
    return text


_QUOTED = re.compile(r"'[^'\n]{3,}'|\"[^\"\n]{3,}\"")


def redact_quoted(text: str) -> str:
    """Replace quoted text by ``'<value>'``: third-party messages quote header values (pydicom's
    "Invalid value for VR UI: '...'"), which can identify a patient."""
    return _QUOTED.sub("'<value>'", text)


def _dicom_ids(path: Path) -> tuple[str, str]:
    """(issuer^PatientID, StudyInstanceUID) from the header; empty strings when absent."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID", "StudyInstanceUID"]
        )
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise UnreadableFileError(f"DICOM header unreadable ({type(err).__name__})", path) from err
    pid = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    return (f"{issuer}^{pid}" if pid else ""), study


def source_identity(
    path: str | os.PathLike,
    rel: str,
    hasher: Hasher,
    is_dicom: bool,
    group_by: str = "file",
    group_regex: str | None = None,
) -> tuple[str, str]:
    """Salted (patient, study) tokens of one source file.

    DICOM: PatientID (with its issuer) and StudyInstanceUID. Other files carry no identifiers, so the
    patient group comes from the path: ``group_regex`` (its first group, or whole match, within the
    folder) when it matches, else the file itself (``group_by="file"``) or its folder (``"folder"``).
    Only tokens leave this function; the raw values never do.
    """
    if group_by not in ("file", "folder"):
        raise InvalidInputError(f"group_by must be 'file' or 'folder', got {group_by!r}")
    relp = PurePosixPath(rel)
    fallback = str(relp) if group_by == "file" else str(relp.parent)
    if group_regex:
        m = re.search(group_regex, str(relp))
        if m is not None:
            fallback = f"{relp.parent}/{m.group(1) if m.groups() else m.group(0)}"
    patient, study = ("", "")
    if is_dicom:
        patient, study = _dicom_ids(Path(path))
    patient_token = hasher(patient, "patient") if patient else hasher(fallback, "group")
    study_token = hasher(study, "study") if study else hasher(str(relp), "source")
    return patient_token, study_token
