"""pneumocnn.core.dicom: DICOM files shown to the model as a viewer shows them, and refused
clearly when they cannot be read."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import TINY_INT8, real_images
from PIL import Image

import pneumocnn

pydicom = pytest.importorskip("pydicom")


def write_dicom(path, pixels: np.ndarray, bits_stored: int = 8, monochrome1: bool = False,
                window: tuple[float, float] | None = None, **tags) -> None:
    """A real DICOM file (Explicit VR Little Endian, DX) holding ``pixels``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    dataset.BitsAllocated = 8 if bits_stored <= 8 else 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 0
    if window:
        dataset.WindowCenter, dataset.WindowWidth = window
    for key, value in tags.items():
        setattr(dataset, key, value)
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    dataset.PixelData = pixels.astype(dtype).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def xray():
    path = real_images("PNEUMONIA", 1, start=7)[0]
    with Image.open(path) as image:
        return path, np.asarray(image.convert("L"))


def test_dicom_made_from_a_jpeg_gives_the_jpeg_answer(xray, tmp_path):
    path, gray = xray
    model = pneumocnn.load(TINY_INT8)
    expected = model.predict(gray).probability
    variants = {
        "8bit.dcm": dict(pixels=gray),
        "12bit.dcm": dict(pixels=np.rint(gray * (4095 / 255)), bits_stored=12),
        "mono1.dcm": dict(pixels=255 - gray.astype(int), monochrome1=True),
        "window.dcm": dict(pixels=gray.astype(int) * 16 + 1000, bits_stored=16,
                           window=(1000 + 127.5 * 16 + 7.5, 256 * 16)),
    }
    for name, spec in variants.items():
        write_dicom(tmp_path / name, **spec)
        assert model.predict(tmp_path / name).probability == pytest.approx(expected, abs=0.02), name
    no_suffix = tmp_path / "IM0001"
    shutil.copy(tmp_path / "8bit.dcm", no_suffix)
    assert model.predict(no_suffix.read_bytes()).probability == pytest.approx(expected, abs=0.02)


def test_dicom_window_is_applied(tmp_path):
    from pneumocnn.core.preprocessing import load_gray

    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    write_dicom(tmp_path / "w.dcm", ramp, bits_stored=12, window=(2048, 1024))
    shown = np.asarray(load_gray(tmp_path / "w.dcm"))
    assert shown[0, 0] == 0 and shown[0, -1] == 255  # outside the window: clipped
    middle = shown[0, 128]  # stored 2048, the window centre
    assert 120 <= middle <= 135


def test_pydicom_test_files_are_read_or_refused_clearly():
    from pydicom.data import get_testdata_file

    model = pneumocnn.load(TINY_INT8)
    ct = get_testdata_file("CT_small.dcm")  # signed 16-bit with rescale
    assert 0.0 <= model.predict(ct).probability <= 1.0
    jpeg_ls = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(pneumocnn.InputError, match="pip install"):
        model.predict(jpeg_ls)


def test_dicom_without_pydicom_names_the_extra(xray, tmp_path):
    import subprocess
    import sys
    import textwrap

    write_dicom(tmp_path / "study.dcm", xray[1])
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pydicom"] = None
        import pneumocnn
        model = pneumocnn.load({str(TINY_INT8)!r})
        try:
            model.predict({str(tmp_path / "study.dcm")!r})
        except pneumocnn.MissingDependencyError as error:
            print("refused:", error)
        print(model.predict([{str(tmp_path / "study.dcm")!r}])[0].error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("pip install 'pneumocnn[dicom]'") == 2
