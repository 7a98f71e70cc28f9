"""The ``hard`` preset of the synthetic cohort: scanner variation, faint lesions, mimics labelled 0, DWI + ADC."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dycon_monai.data import isles22_datalist
from dycon_monai.data.synthetic import main, make_synthetic_cohort, synthesize_case
from dycon_monai.data.synthetic_hard import MIMIC_LOW_ADC, MIMIC_SHINE_THROUGH

_S26 = np.ones((3, 3, 3), dtype=bool)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _local_ratio(image: np.ndarray, blob: np.ndarray, brain: np.ndarray, exclude: np.ndarray) -> float:
    """Median of ``image`` on ``blob`` over its median on a 2-voxel shell of brain around it (bias-free)."""
    shell = ndimage.binary_dilation(blob, _S26, iterations=3) & ~ndimage.binary_dilation(blob, _S26) & brain
    shell &= ~exclude
    return float(np.median(image[blob]) / np.median(image[shell]))


def _components(mask: np.ndarray, min_voxels: int) -> list[np.ndarray]:
    lab, n = ndimage.label(mask, structure=_S26)
    return [lab == j for j in range(1, n + 1) if (lab == j).sum() >= min_voxels]


@pytest.fixture(scope="module")
def hard_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard") / "c"
    return make_synthetic_cohort(root, cases=5, seed=0, spacing=6.0, lesion_free=1, preset="hard")


def test_hard_deterministic_per_seed_and_same_masks_as_default():
    a = synthesize_case(2, seed=5, spacing=8.0, preset="hard")
    b = synthesize_case(2, seed=5, spacing=8.0, preset="hard")
    c = synthesize_case(2, seed=6, spacing=8.0, preset="hard")
    d = synthesize_case(2, seed=5, spacing=8.0)  # default preset
    assert _digest(a.dwi, a.adc, a.label, a.mimic) == _digest(b.dwi, b.adc, b.label, b.mimic)
    assert a.info == b.info
    assert _digest(a.dwi) != _digest(c.dwi)
    # same anatomy and lesion mask as the default (lesion statistics unchanged), different images
    np.testing.assert_array_equal(a.label, d.label)
    np.testing.assert_array_equal(a.brain, d.brain)
    assert _digest(a.dwi) != _digest(d.dwi) and d.mimic is None
    assert a.dwi.dtype == a.adc.dtype == np.float32 and a.label.dtype == np.uint8


def test_adc_written_and_read_as_second_channel(hard_cohort):
    d = isles22_datalist(hard_cohort, labeled_count=2, modalities=["dwi", "adc"])
    entries = d["training_labeled"] + d["training_unlabeled"] + d["validation"] + d["test"]
    assert len(entries) == 5
    for e in entries:
        dwi, adc = e["image"]
        cid = e["case_id"]
        assert dwi.endswith(f"rawdata/{cid}/ses-0001/dwi/{cid}_ses-0001_dwi.nii.gz")
        assert adc.endswith(f"rawdata/{cid}/ses-0001/dwi/{cid}_ses-0001_adc.nii.gz")
        a, b = nib.load(dwi), nib.load(adc)
        assert a.shape == b.shape and a.get_data_dtype() == b.get_data_dtype() == np.float32
        np.testing.assert_allclose(a.affine, b.affine)


def test_summary_records_preset_and_per_case_scanner(hard_cohort):
    facts = json.loads((hard_cohort / "synthetic_cohort.json").read_text())
    assert facts["preset"] == "hard"
    cases = facts["case_facts"]
    scales = [f["scanner"]["intensity_scale"] for f in cases]
    assert len(set(scales)) == len(cases) and max(scales) / min(scales) > 1.2
    assert all(0.6 <= s <= 1.6 for s in scales)
    assert len({f["scanner"]["snr"] for f in cases}) == len(cases)
    assert all(0.0 <= f["scanner"]["blur_sigma_vox"] <= 1.5 for f in cases)
    assert all(f["mimics"] >= 1 and f["mimic_volume"] > 0 for f in cases)  # also in the lesion-free case
    for f in cases:
        assert len(f["lesion_dwi_contrast"]) == f["num_components"] == len(f["lesion_adc_factor"])
    low = [c for f in cases for c in f["lesion_dwi_contrast"] if c < 1.2]
    assert low, "no lesion with a DWI contrast below 1.2x in the cohort"
    free = [f for f in cases if f["lesion_free"]]
    assert len(free) == 1 and free[0]["volume"] == 0


def test_mimics_labelled_zero_and_told_apart_by_adc():
    case = synthesize_case(6, seed=0, spacing=4.0, preset="hard")
    lab = case.label.astype(bool)
    assert case.mimic is not None and case.mimic.dtype == np.uint8
    assert not (lab & (case.mimic > 0)).any(), "mimic voxels must be labelled 0"
    exclude = ndimage.binary_dilation(lab | (case.mimic > 0), _S26)
    shine = _components(case.mimic == MIMIC_SHINE_THROUGH, 15)
    assert shine, "expected DWI-bright mimics"
    for blob in shine:  # bright on DWI, not dark on ADC (drawn x1.3-2.5 / x1.0-1.4; noise and blur move the medians)
        assert _local_ratio(case.dwi, blob, case.brain, exclude & ~blob) > 1.2
        assert _local_ratio(case.adc, blob, case.brain, exclude & ~blob) > 0.9
    for blob in _components(case.mimic == MIMIC_LOW_ADC, 15):  # dark on ADC, not bright on DWI
        assert _local_ratio(case.dwi, blob, case.brain, exclude & ~blob) < 1.15
        assert _local_ratio(case.adc, blob, case.brain, exclude & ~blob) < 0.85
    lesions = _components(lab, 8)
    assert lesions
    for blob in lesions:  # real lesions: bright on DWI and dark on ADC
        assert _local_ratio(case.dwi, blob, case.brain, exclude & ~blob) > 1.1
        assert _local_ratio(case.adc, blob, case.brain, exclude & ~blob) < 0.85


def test_low_contrast_lesions_exist():
    case = synthesize_case(3, seed=0, spacing=4.0, preset="hard")
    lab = case.label.astype(bool)
    exclude = ndimage.binary_dilation(lab | (case.mimic > 0), _S26)
    faint = [
        blob
        for blob in _components(lab, 100)
        if _local_ratio(case.dwi, blob, case.brain, exclude & ~blob) < 1.2
        and _local_ratio(case.adc, blob, case.brain, exclude & ~blob) < 0.8
    ]
    assert faint, "expected large lesions only slightly brighter than their surroundings on DWI (but dark on ADC)"
    assert min(case.info["lesion_dwi_contrast"]) < 1.2 < max(case.info["lesion_dwi_contrast"])


def test_cli_preset_hard_and_bad_preset(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--cases", "1", "--spacing", "10", "--preset", "hard"]) == 0
    assert "(preset hard)" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "synthetic_cohort.json").read_text())["preset"] == "hard"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "d"), "--preset", "harder"])
    with pytest.raises(ValueError, match="preset"):
        make_synthetic_cohort(tmp_path / "e", cases=1, spacing=10.0, preset="harder")
    with pytest.raises(ValueError, match="preset"):
        synthesize_case(1, spacing=10.0, preset="Hard")
