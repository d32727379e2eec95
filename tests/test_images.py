"""rmnet.data.images (loading, resizing, blobs) and rmnet.atomic (atomic writes), on real files."""
from __future__ import annotations

import os
import pickle
import stat

import cv2
import numpy as np
import pytest

from rmnet.data.images import (ImageError, decode_bgr, is_image_name, load_blob, load_bgr, resize_to,
                          to_blob)
from rmnet.atomic import atomic_dir, atomic_path, atomic_write, atomic_write_bytes, atomic_write_text


def _picture(h=40, w=24, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (255, 0, 0)            # blue top half (BGR)
    img[h // 2:] = (0, 0, 255)             # red bottom half
    img[5:15, 5:15] = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    return img


def _jpeg_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


# --- load_bgr -------------------------------------------------------------------------------

def test_load_png_is_exact_bgr_uint8(tmp_path):
    img = _picture()
    path = tmp_path / "a.png"
    assert cv2.imwrite(str(path), img)
    out = load_bgr(path)
    assert out.dtype == np.uint8 and out.shape == (40, 24, 3)
    np.testing.assert_array_equal(out, img)          # lossless, and channel order kept
    assert tuple(out[0, 0]) == (255, 0, 0)           # blue is channel 0: BGR, as the nets expect


def test_load_jpeg_close_to_original(tmp_path):
    img = _picture()
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes(img))
    out = load_bgr(str(path))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[30, 20, 2] > 200 and out[30, 20, 0] < 60   # still red below, in BGR order


def test_grey_and_alpha_images_come_out_as_three_channels(tmp_path):
    grey = np.arange(12 * 8, dtype=np.uint8).reshape(12, 8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    out = load_bgr(tmp_path / "g.png")
    assert out.shape == (12, 8, 3)
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 2], grey)
    bgra = np.dstack([_picture(), np.full((40, 24), 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert load_bgr(tmp_path / "a.png").shape == (40, 24, 3)


def test_16_bit_png_comes_out_as_8_bit(tmp_path):
    deep = np.full((6, 4, 3), 65535, np.uint16)
    deep[0, 0] = (0, 32896, 65535)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = load_bgr(tmp_path / "d.png")
    assert out.dtype == np.uint8 and tuple(out[0, 0]) == (0, 128, 255) and out[5, 3, 1] == 255


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope" / "0001_c1s1_000001_01.jpg"
    with pytest.raises(ImageError, match="file not found") as e:
        load_bgr(path)
    assert e.value.path == str(path) and str(path) in str(e.value)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(ImageError, match="is a directory") as e:
        load_bgr(tmp_path)
    assert str(tmp_path) in str(e.value)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file") as e:
        load_bgr(empty)
    assert str(empty) in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.png"
    cv2.imwrite(str(path), _picture())
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="cannot read") as e:
            load_bgr(path)
        assert str(path) in str(e.value)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("content", [b"hello, not an image\n", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
                                     + bytes(200)])   # the second: an OLE file, like Thumbs.db
def test_non_image_content_names_the_file(tmp_path, content):
    path = tmp_path / "0001_c1s1_000001_01.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="not an image OpenCV can decode") as e:
        load_bgr(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("cut", ["eoi", "half", "header"])
def test_truncated_jpeg_is_detected(tmp_path, cut):
    data = _jpeg_bytes(_picture(80, 48))
    sos = data.rfind(b"\xff\xda")
    keep = {"eoi": len(data) - 2, "half": (sos + len(data)) // 2, "header": sos - 10}[cut]
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:keep])
    with pytest.raises(ImageError, match="truncated") as e:
        load_bgr(path)
    assert str(path) in str(e.value)


def test_jpeg_with_trailer_after_end_marker_loads(tmp_path):
    """Bytes after FF D9 (camera trailers, zero padding) do not make a JPEG incomplete."""
    img = _picture()
    path = tmp_path / "trailer.jpg"
    path.write_bytes(_jpeg_bytes(img) + bytes(64))
    np.testing.assert_array_equal(load_bgr(path), decode_bgr(_jpeg_bytes(img)))


def test_corrupt_jpeg_with_markers_is_detected(tmp_path):
    rng = np.random.default_rng(1)
    junk = rng.integers(0, 255, 300, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff" + junk + b"\xff\xda" + junk + b"\xff\xd9")
    with pytest.raises(ImageError, match="corrupt") as e:
        load_bgr(path)
    assert str(path) in str(e.value)


def test_truncated_png_is_detected(tmp_path):
    ok, buf = cv2.imencode(".png", _picture())
    path = tmp_path / "cut.png"
    path.write_bytes(buf.tobytes()[:-12])      # the IEND chunk is the last 12 bytes
    with pytest.raises(ImageError, match="truncated PNG") as e:
        load_bgr(path)
    assert str(path) in str(e.value)


def test_image_error_pickles_for_worker_processes(tmp_path):
    err = ImageError(tmp_path / "x.jpg", "truncated JPEG")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageError)
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


def test_is_image_name():
    assert is_image_name("a.jpg") and is_image_name("B.JPEG") and is_image_name("c.Png")
    assert not is_image_name("Thumbs.db") and not is_image_name("a.jpg.txt")
    assert not is_image_name("jpg")


# --- resize_to, to_blob, load_blob ---------------------------------------------------------

def test_resize_to_shape_dtype_and_linear_interpolation():
    img = _picture()
    out = resize_to(img, 160, 64)
    assert out.shape == (160, 64, 3) and out.dtype == np.uint8
    assert resize_to(img, 40, 24) is img        # already the size: no copy, no resampling
    # bilinear with pixel centres at +0.5 (OpenCV's convention), worked by hand:
    # dst x = 0..3 maps to src x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    row = np.array([[[0, 0, 0], [100, 100, 100]]], np.uint8)
    np.testing.assert_array_equal(resize_to(row, 1, 4)[0, :, 0], [0, 25, 75, 100])


def test_resize_to_rejects_bad_sizes():
    with pytest.raises(ValueError, match="height and width"):
        resize_to(_picture(), 0, 64)
    with pytest.raises(ValueError, match="image"):
        resize_to(np.zeros((0, 4, 3), np.uint8), 8, 8)


def test_to_blob_layout_and_values():
    a, b = _picture(seed=1), _picture(seed=2)
    blob = to_blob([a, b])
    assert blob.shape == (2, 3, 40, 24) and blob.dtype == np.float32
    assert blob.flags["C_CONTIGUOUS"]
    assert blob[1, 0, 7, 9] == b[7, 9, 0] and blob[0, 2, 30, 3] == a[30, 3, 2] == 255
    np.testing.assert_array_equal(to_blob(np.stack([a, b])), blob)   # an NHWC array works too


def test_to_blob_rejects_mixed_sizes_and_bad_shapes():
    with pytest.raises(ValueError, match="image 1 has shape"):
        to_blob([_picture(), _picture(20, 24)])
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\)"):
        to_blob([np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        to_blob([])


def test_load_blob_from_files(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(40, 24), (100, 50)]):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), _picture(h, w, seed=i))
    blob = load_blob(paths, 160, 64)
    assert blob.shape == (2, 3, 160, 64) and blob.dtype == np.float32
    np.testing.assert_array_equal(blob[1], to_blob([resize_to(_picture(100, 50, 1), 160, 64)])[0])
    with pytest.raises(ImageError, match="file not found"):
        load_blob([paths[0], tmp_path / "gone.png"], 160, 64)


# --- atomic writes -------------------------------------------------------------------------

def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "out.txt"           # the parent is created
    atomic_write_text(path, "one")
    assert path.read_text() == "one"
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert _leftovers(path.parent) == []
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask                 # not mkstemp's private 0600


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"the old weights")

    def writer(tmp):
        tmp.write_bytes(b"half of the new weig")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, writer)
    assert path.read_bytes() == b"the old weights"
    assert _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"the old weights"
    assert _leftovers(tmp_path) == []


def test_atomic_path_keeps_suffix_and_mode(tmp_path):
    """Writers that choose the format by extension (cv2.imwrite, savefig) work on the temp name."""
    path = tmp_path / "plot.png"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != path
        assert cv2.imwrite(str(tmp), _picture())
        assert not path.exists()                  # nothing visible before the end
    np.testing.assert_array_equal(load_bgr(path), _picture())
    path.chmod(0o640)
    atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), _picture(seed=3)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_path_refuses_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError):
        with atomic_path(tmp_path):
            pass


def test_atomic_dir(tmp_path):
    out = tmp_path / "ds"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1"
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as d:
            (d / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a"]      # untouched
    with atomic_dir(out, overwrite=True) as d:
        (d / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as d:                  # an empty directory may be replaced
        (d / "c").write_text("3")
    assert (empty / "c").read_text() == "3"
    assert _leftovers(tmp_path) == []
