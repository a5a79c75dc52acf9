"""Synthetic query scenes (screen, desk, lightbox): size, determinism, exact corners, thumbnails."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from papyrus_widgets import scenes

from .conftest import REFERENCES


def _load(name: str, side: int) -> Image.Image:
    img = Image.open(REFERENCES / name)
    img.draft("RGB", (side, side))
    img = img.convert("RGB")
    img.thumbnail((side, side))
    return img


@pytest.fixture(scope="module")
def target() -> Image.Image:
    return _load("19331_p_g_107.jpg", 1000)


@pytest.fixture(scope="module")
def others() -> list[Image.Image]:
    names = sorted(p.name for p in REFERENCES.glob("*.jpg"))[:6]
    return [_load(n, 400) for n in names]


def _pattern(w: int = 320, h: int = 240, block: int = 8) -> Image.Image:
    """A target whose pixels pin down any shift: random grey blocks."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (h // block, w // block), dtype=np.uint8)
    return Image.fromarray(np.kron(small, np.ones((block, block), np.uint8))).convert("RGB")


def _deskew(scene: scenes.Scene, w: int, h: int) -> np.ndarray:
    """The scene's target region warped back onto a w x h grid via ``scene.corners`` (edge coordinates)."""
    rect = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(scene.corners.astype(np.float32), rect).astype(np.float64)
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m = np.linalg.inv(half) @ m @ half  # edge → pixel-centre coordinates for cv2
    grey = cv2.cvtColor(np.asarray(scene.image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.warpPerspective(grey, m, (w, h), flags=cv2.INTER_LINEAR)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_same_seed_same_pixels(kind, target, others):
    a = scenes.make_scene(target, others, np.random.default_rng(3), kind=kind)
    b = scenes.make_scene(target, others, np.random.default_rng(3), kind=kind)
    c = scenes.make_scene(target, others, np.random.default_rng(4), kind=kind)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.corners, b.corners) and a.target_fraction == b.target_fraction
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("kind", scenes.KINDS)
@pytest.mark.parametrize("size", [(1600, 1200), (1200, 1600)])
def test_size_corners_and_fraction(kind, size, target, others):
    for seed in range(1):
        scene = scenes.make_scene(target, others, np.random.default_rng(seed), kind=kind, size=size)
        assert scene.kind == kind
        assert scene.image.mode == "RGB" and scene.image.size == size
        assert scene.corners.shape == (4, 2)
        assert (scene.corners >= -1).all() and (scene.corners <= np.array(size) + 1).all()
        assert 0.08 <= scene.target_fraction <= 0.45
        quad = scene.corners
        area = 0.5 * abs(np.dot(quad[:, 0], np.roll(quad[:, 1], -1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], -1)))
        assert area / (size[0] * size[1]) == pytest.approx(scene.target_fraction)


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_corners_are_exact(kind, others):
    """Warped back through its corners, the scene matches a random-block target best at zero shift,
    to a tenth of a pixel (peak of the correlation over one-pixel shifts, fitted by a parabola)."""
    pattern = _pattern(block=4)
    ref = np.asarray(pattern.convert("L"), np.float32)
    inner = (slice(6, -6), slice(6, -6))
    for seed in range(3):
        scene = scenes.make_scene(pattern, others, np.random.default_rng(seed), kind=kind, fraction=0.3)
        back = _deskew(scene, *pattern.size)
        c = np.array(
            [[_corr(np.roll(back, (dy, dx), axis=(0, 1))[inner], ref[inner]) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)]
        )
        assert c[1, 1] > 0.6 and c[1, 1] == c.max(), (kind, seed, c)
        peak_x = 0.5 * (c[1, 0] - c[1, 2]) / (c[1, 0] - 2 * c[1, 1] + c[1, 2])
        peak_y = 0.5 * (c[0, 1] - c[2, 1]) / (c[0, 1] - 2 * c[1, 1] + c[2, 1])
        assert abs(peak_x) < 0.1 and abs(peak_y) < 0.1, (kind, seed, peak_x, peak_y)


def test_screen_thumbnails_show_others(target):
    magenta = Image.new("RGB", (300, 400), (255, 0, 255))
    scene = scenes.screen_scene(target, [magenta], np.random.default_rng(1), fraction=0.1)
    px = np.asarray(scene.image).astype(int)
    pink = (px[..., 0] > 150) & (px[..., 2] > 150) & (px[..., 1] < 110)
    assert pink.sum() > 500
    without = scenes.screen_scene(target, [], np.random.default_rng(1), fraction=0.1)
    px = np.asarray(without.image).astype(int)
    assert ((px[..., 0] > 150) & (px[..., 2] > 150) & (px[..., 1] < 110)).sum() < pink.sum() / 5


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_no_others_and_tiny_frame(kind, target):
    scene = scenes.make_scene(target, [], np.random.default_rng(0), kind=kind, size=(320, 240))
    assert scene.image.size == (320, 240)
    assert (scene.corners >= -1).all() and (scene.corners <= np.array([321, 241])).all()


def test_make_scenes_keeps_names_and_is_stable(target, others):
    out = scenes.make_scenes([("a", target), ("b", others[0])], others, 2, seed=5, size=(400, 300))
    assert [name for name, _ in out] == ["a", "a", "b", "b"]
    assert {s.kind for _, s in out} <= set(scenes.KINDS)
    again = scenes.make_scenes([("a", target)], others, 1, seed=5, size=(400, 300))
    assert np.array_equal(np.asarray(again[0][1].image), np.asarray(out[0][1].image))
    with pytest.raises(ValueError, match="kind"):
        scenes.make_scene(target, others, np.random.default_rng(0), kind="beach")


def _visible_deskew(img: Image.Image, corners: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_deskew` for any photo and corners, with the mask of the grid cells that lie inside the photo."""
    scene = scenes.Scene(img, corners, "", 0.0)
    inside = scenes.Scene(Image.new("RGB", img.size, (255, 255, 255)), corners, "", 0.0)
    return _deskew(scene, w, h), _deskew(inside, w, h) > 254


RESHAPED = ("relit", "wavy", "bare")
"""Variants that change the sheet itself before the scene places it, the same size: *wavy* moves
its pixels between the corners, *relit* shades its relief (which shifts a correlation's peak
without moving anything), *bare* cuts away what is not papyrus (the random-block target is grey:
nothing of it would be left). Their own tests check that they keep the corners; the scene places
them as any target."""


SCREEN_ONLY = ("lcd",)
"""Variants of a photo of a screen only."""

SMEARED = ("shaky",)
"""Variants whose blur spans more than the random-block target's blocks (a correlation has no sharp
peak to find): their own test checks that the blur moves nothing on average."""


@pytest.mark.parametrize("variant", [v for v in scenes.VARIANTS if v not in RESHAPED + SMEARED])
def test_variants_keep_the_corners_exact(variant, others):
    """Each photo outside the usual range, decoded as a user's upload would be (EXIF orientation applied),
    still has the target exactly at its corners: warped back, the visible part of a random-block target
    correlates best at zero shift, to a fifth of a pixel."""
    from papyrus_widgets.imaging import decode_image

    pattern = _pattern(block=4)
    ref = np.asarray(pattern.convert("L"), np.float32)
    for seed, kind in enumerate(("screen",) * 3 if variant in SCREEN_ONLY else scenes.KINDS):
        rng = np.random.default_rng(seed)
        scene = scenes.make_scene(pattern, others, rng, kind=kind, fraction=0.3, variant=variant)
        shown = decode_image(scenes.encode(scene))
        assert shown.size == scene.image.size
        back, valid = _visible_deskew(shown, scene.corners, *pattern.size)
        valid[:6], valid[-6:], valid[:, :6], valid[:, -6:] = False, False, False, False
        assert valid.mean() > 0.25, (variant, kind)
        c = np.array(
            [[_corr(np.roll(back, (dy, dx), axis=(0, 1))[valid], ref[valid]) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)]
        )
        assert c[1, 1] > 0.3 and c[1, 1] == c.max(), (variant, kind, c)
        peak_x = 0.5 * (c[1, 0] - c[1, 2]) / (c[1, 0] - 2 * c[1, 1] + c[1, 2])
        peak_y = 0.5 * (c[0, 1] - c[2, 1]) / (c[0, 1] - 2 * c[1, 1] + c[2, 1])
        assert abs(peak_x) < 0.2 and abs(peak_y) < 0.2, (variant, kind, peak_x, peak_y)


def test_variants_are_what_they_say(target, others):
    rng = np.random.default_rng
    close = scenes.make_scene(target, others, rng(1), kind="desk", variant="closeup")
    assert close.image.size == (1600, 1200) and 1.6 < close.target_fraction < 3.0  # 35-60 % of it in the frame
    phone = scenes.make_scene(target, others, rng(2), kind="screen", variant="phone")
    data = scenes.encode(phone)
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (4032, 3024) and stored.getexif().get(0x0112) == 6
    assert phone.image.size == (3024, 4032)
    turned = [scenes.make_scene(target, others, rng(s), kind="lightbox", variant="turned") for s in range(12)]
    assert {t.image.size for t in turned} == {(1600, 1200), (1200, 1600)}
    w, h = target.size
    rect = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)

    def squash(corners: np.ndarray) -> float:  # a plane tilted by t is shortened by about cos t along the tilt
        affine = np.linalg.lstsq(np.c_[rect, np.ones(4)], corners, rcond=None)[0][:2]
        s = np.linalg.svd(affine, compute_uv=False)
        return float(s[1] / s[0])

    for kind in scenes.KINDS:  # tilted 45-60 degrees: cos 0.71-0.5; the usual scenes stay within 0-35 (>= 0.82)
        assert squash(scenes.make_scene(target, [], rng(3), kind=kind, variant="steep").corners) < 0.75
        assert squash(scenes.make_scene(target, [], rng(3), kind=kind).corners) > 0.8
    plain = scenes.make_scene(target, others, rng(4), kind="desk")
    dim = scenes.make_scene(target, others, rng(4), kind="desk", variant="dim")
    assert np.asarray(dim.image).mean() < 0.6 * np.asarray(plain.image).mean()
    assert np.array_equal(dim.corners, plain.corners)
    resent = [scenes.make_scene(target, others, rng(s), kind="screen", variant="resent") for s in range(4)]
    assert all(scenes.RESENT_SIDE[0] <= max(r.image.size) <= scenes.RESENT_SIDE[1] for r in resent)
    assert all(abs(r.image.width / r.image.height - 4 / 3) < 0.01 for r in resent)
    with pytest.raises(ValueError, match="variant"):
        scenes.make_scene(target, others, rng(0), variant="underwater")
    with pytest.raises(ValueError, match="screen"):
        scenes.make_scene(target, others, rng(0), kind="desk", variant="lcd")


def test_an_lcd_photo_is_the_same_screen_scene_seen_as_a_phone_sees_a_panel(target, others):
    """*lcd*: the screen scene of the same seed — the same frame size, the target at the same
    corners — with the panel's light changed: the papyrus on it looks different."""
    rng = np.random.default_rng
    for seed in range(4):
        plain = scenes.make_scene(target, others, rng([5, seed]), kind="screen")
        lcd = scenes.make_scene(target, others, rng([5, seed]), variant="lcd")
        assert lcd.kind == "screen" and lcd.image.size == plain.image.size
        assert np.array_equal(lcd.corners, plain.corners) and lcd.target_fraction == plain.target_fraction
        a, b = (np.asarray(s.image, np.float32).mean(-1) for s in (plain, lcd))
        inside = np.zeros(a.shape, np.uint8)
        cv2.fillConvexPoly(inside, np.round(lcd.corners).astype(np.int32), 1)
        assert np.abs(a - b)[inside > 0].mean() > 4, seed  # the papyrus on the panel looks different


def _detail(img: Image.Image) -> float:
    """The energy of an image's edges a few pixels across (what SIFT sees; a pixel's noise left out)."""
    grey = cv2.GaussianBlur(np.asarray(img.convert("L"), np.float32), (0, 0), 2.0)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def test_a_shaky_photo_is_the_same_scene_smeared_along_the_camera_s_path(target, others):
    """*shaky*: the scene of the same seed, the target at the same corners, blurred by a shake whose
    trace is a path of :data:`scenes.SHAKE_LENGTH` of the frame (not a disc: it is long and thin)
    whose centroid is the kernel's centre, so that nothing moves on average."""
    rng = np.random.default_rng
    for seed in range(3):
        plain = scenes.make_scene(target, others, rng([6, seed]))
        shaky = scenes.make_scene(target, others, rng([6, seed]), variant="shaky")
        assert shaky.kind == plain.kind and shaky.image.size == plain.image.size
        assert np.array_equal(shaky.corners, plain.corners) and shaky.target_fraction == plain.target_fraction
        a, b = (_detail(s.image) for s in (plain, shaky))
        assert b < 0.6 * a, (seed, a, b)  # smeared
    for seed in range(6):
        length = 8.0 + 2 * seed
        kern = scenes._shake_kernel(rng(seed), length)
        r = kern.shape[0] // 2
        yy, xx = np.mgrid[: kern.shape[0], : kern.shape[1]]
        assert abs(kern.sum() - 1) < 1e-5
        assert abs((kern * xx).sum() - r) < 1e-3 and abs((kern * yy).sum() - r) < 1e-3, seed
        ys, xs = np.nonzero(kern > 0)
        assert length - 1 <= np.hypot(np.ptp(xs), np.ptp(ys)) <= length + 3, seed  # the path spans its length
        assert (kern > 0).sum() < 0.5 * kern.size, seed  # a trace, not a disc


def test_variants_combine_into_one_photo(target, others):
    """Variants joined by ``+`` make one photo with each part's change: *lcd+steep* is the steep
    screen scene of the same seed (the same corners: the panel's draws leave the scene's alone) in
    the panel's light, and *lcd+steep+shaky* is that very photo smeared; a single variant is drawn
    as on its own. Nonsense is refused with the reason."""
    rng = np.random.default_rng
    steep = scenes.make_scene(target, others, rng(8), kind="screen", variant="steep")
    panel = scenes.make_scene(target, others, rng(8), variant="lcd+steep")
    shaken = scenes.make_scene(target, others, rng(8), variant="lcd+steep+shaky")
    assert panel.kind == shaken.kind == "screen"
    assert np.array_equal(panel.corners, steep.corners) and np.array_equal(shaken.corners, steep.corners)
    a, b = (np.asarray(s.image, np.float32).mean(-1) for s in (steep, panel))
    inside = np.zeros(a.shape, np.uint8)
    cv2.fillConvexPoly(inside, np.round(steep.corners).astype(np.int32), 1)
    assert np.abs(a - b)[inside > 0].mean() > 4  # the panel's light
    assert _detail(shaken.image) < 0.8 * _detail(panel.image)  # smeared (0.61 for this seed) ...
    soft = [cv2.GaussianBlur(np.asarray(s.image.convert("L"), np.float32), (0, 0), 6.0) for s in (panel, shaken)]
    assert _corr(soft[0], soft[1]) > 0.95  # ... the same photo
    close = scenes.make_scene(target, others, rng(9), kind="desk", variant="closeup")
    dark = scenes.make_scene(target, others, rng(9), kind="desk", variant="closeup+dim")
    assert np.array_equal(dark.corners, close.corners)
    assert np.asarray(dark.image).mean() < 0.6 * np.asarray(close.image).mean()
    assert scenes.variant_parts("relit+wavy+shaky") == ("relit", "wavy", "shaky") and scenes.variant_parts(None) == ()
    for bad, reason in (("lcd+lcd", "twice"), ("closeup+phone", "framing"), ("lcd+underwater", "unknown")):
        with pytest.raises(ValueError, match=reason):
            scenes.make_scene(target, others, rng(0), variant=bad)
    with pytest.raises(ValueError, match="screen"):
        scenes.make_scene(target, others, rng(0), kind="desk", variant="shaky+lcd")


def test_a_print_is_a_halftone_of_the_target(target, others):
    """A *print*: the target the same size, its tones made of dots of ink (a flat grey becomes a
    pattern of dots, not a flat tone), no ink where the scan is white, darker where it is dark;
    mostly black ink (grey), sometimes four colours."""
    rng = np.random.default_rng
    grey, colour = 0, 0
    for seed in range(12):
        out = np.asarray(scenes._printed(Image.new("RGB", (300, 200), (128, 128, 128)), rng(seed)), np.float32)
        assert out.shape == (200, 300, 3)
        assert out.std(axis=(0, 1)).max() > 25, seed  # dots (of one ink at least)
        white = np.asarray(scenes._printed(Image.new("RGB", (80, 60), (255, 255, 255)), rng(seed)), np.float32)
        dark = np.asarray(scenes._printed(Image.new("RGB", (80, 60), (40, 40, 40)), rng(seed)), np.float32)
        assert white.min() > 200 and dark.mean() < out.mean() - 20 < white.mean() - 40, seed
        spread = np.abs(out[..., 0] - out[..., 2]).mean()  # black ink on tinted paper, or three inks
        grey, colour = grey + (spread < 30), colour + (spread >= 30)
    assert grey >= 5 and colour >= 2, (grey, colour)
    scene = scenes.make_scene(target, others, rng(6), kind="lightbox", variant="print")
    assert scene.image.size == (1600, 1200) and 0.1 <= scene.target_fraction <= 0.4


def test_relit_is_another_photo_of_the_same_sheet(target, others):
    """*relit*: the target the same size, nothing moved (a dark bar stays where it was), its relief
    lit from a side (the two edges of a bar differ), mostly in colour with another white balance,
    sometimes an infrared grey; a cut-out fragment keeps its transparency."""
    sheet = np.full((200, 300, 3), (185, 150, 105), np.uint8)
    sheet[:, 140:150] = 40  # a vertical stroke
    sheet[90:100, :] = 40  # a horizontal one
    grey = colour = 0
    for seed in range(12):
        out = np.asarray(scenes._relit(Image.fromarray(sheet), np.random.default_rng(seed)), np.float32)
        assert out.shape == (200, 300, 3)
        lum = out.mean(-1)
        assert 140 <= int(lum[20:80].mean(0).argmin()) < 150, seed  # the stroke is where it was
        assert 90 <= int(lum[:, 20:130].mean(1).argmin()) < 100, seed
        sides = max(abs(lum[20:80, 134:139].mean() - lum[20:80, 151:156].mean()),
                    abs(lum[84:89, 20:130].mean() - lum[101:106, 20:130].mean()))  # fmt: skip
        assert sides > 4, (seed, sides)  # one side of a stroke catches the light, the other not
        spread = np.abs(out[..., 0] - out[..., 2]).max()
        grey, colour = grey + (spread < 2), colour + (spread >= 2)
        plain = out[20:80, 20:120]
        assert np.abs(plain.mean((0, 1)) - sheet[20:80, 20:120].mean((0, 1))).max() > 3, seed  # not the scan's colour
    assert grey >= 2 and colour >= 5, (grey, colour)
    opaque = np.where(np.arange(300) < 200, 255, 0)[None].repeat(200, 0)  # the right third transparent
    cut = Image.fromarray(np.dstack([sheet, opaque]).astype(np.uint8))
    out = np.asarray(scenes._relit(cut, np.random.default_rng(0)))
    assert out.shape == (200, 300, 4) and (out[:, 210:, 3] == 0).all() and (out[:, :190, 3] == 255).all()
    scene = scenes.make_scene(target, others, np.random.default_rng(6), kind="desk", variant="relit")
    assert scene.image.size == (1600, 1200) and 0.1 <= scene.target_fraction <= 0.4


def _scan() -> np.ndarray:
    """A scan as libraries publish them: a papyrus (brown, with ink strokes and a hole) on a white
    ground, a grey footer bar with the library's red seal and a line of dark text below it."""
    scan = np.full((400, 300, 3), 252, np.uint8)
    sheet = np.array([[40, 30], [250, 45], [270, 300], [150, 330], [30, 290]], np.int32)
    cv2.fillPoly(scan, [sheet], (190, 150, 100))
    scan[100:104, 60:230] = 35  # ink
    scan[180:184, 60:230] = 35
    scan[220:250, 120:150] = 252  # a hole: the ground shows through
    scan[360:] = 206  # the footer bar
    cv2.circle(scan, (270, 380), 12, (170, 20, 40), -1)  # its seal
    scan[376:380, 40:200] = 60  # its text
    return scan


def test_bare_is_the_papyrus_without_its_scans_ground_and_footer(target, others):
    """*bare*: the scan the same size, transparent but for the papyrus — its ink kept, its hole,
    the white ground, the footer bar, its seal and its text gone, the papyrus's pixels unchanged; a
    fragment cut out already is left as it is; in a scene the same corners as the seed's photo
    without the variant (it draws nothing), the target and the papyri around it cut out."""
    scan = _scan()
    out = np.asarray(scenes._bare(Image.fromarray(scan)))
    assert out.shape == (400, 300, 4)
    alpha = out[..., 3]
    assert alpha[60:90, 60:230].min() == 255 and alpha[100:104, 60:230].min() == 255  # papyrus, ink
    assert alpha[230:240, 130:140].max() == 0  # the hole
    assert alpha[5:20].max() == 0 and alpha[360:].max() == 0  # the ground; the footer, seal and text
    assert np.array_equal(out[..., :3], scan)
    cut = Image.fromarray(out)
    assert scenes._bare(cut) is cut
    rng = np.random.default_rng
    for kind in scenes.KINDS:
        plain = scenes.make_scene(target, others, rng(11), kind=kind)
        bare = scenes.make_scene(target, others, rng(11), kind=kind, variant="bare")
        assert np.array_equal(plain.corners, bare.corners), kind
        assert not np.array_equal(np.asarray(plain.image), np.asarray(bare.image)), kind
    assert all(im.mode == "RGBA" for im in scenes._Bare(others)[:2])


def _shift(patch: np.ndarray, ref: np.ndarray, at: tuple[int, int], reach: int) -> tuple[int, int]:
    """Where ``patch`` (cut from a picture of ``ref`` at ``at``) lies in ``ref``, relative to ``at``:
    the shift within ``reach`` that correlates best."""
    y, x = at
    h, w = patch.shape
    scores = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if 0 <= y + dy and y + dy + h <= ref.shape[0] and 0 <= x + dx and x + dx + w <= ref.shape[1]:
                scores[dy, dx] = _corr(patch, ref[y + dy : y + dy + h, x + dx : x + dx + w])
    return max(scores, key=scores.__getitem__)


def test_wavy_keeps_its_corners_and_waves_between_them(target, others):
    """*wavy*: the target the same size with transparency; at its four corners nothing moved; in
    between its pixels moved, by at most twice WAVE_AMPLITUDE of its long side (a patch found
    again by correlation), and in some sheets an edge moved inwards (transparent there)."""
    pattern = _pattern(block=4)
    ref = np.asarray(pattern.convert("L"), np.float32)
    h, w = ref.shape
    marked = np.asarray(pattern).copy()
    corners = [(0, 0), (0, w - 4), (h - 4, w - 4), (h - 4, 0)]
    for y, x in corners:  # a red square in each corner
        marked[y : y + 4, x : x + 4] = (255, 0, 0)
    most, inwards = 0, 0
    for seed in range(8):
        out = scenes._wavy(Image.fromarray(marked), np.random.default_rng(seed))
        assert out.mode == "RGBA" and out.size == pattern.size
        px = np.asarray(out, np.float32)
        red = np.clip((px[..., 0] - px[..., 1:3].max(-1)) / 255, 0, 1) * px[..., 3] / 255
        for y, x in corners:  # each red square is where it was, to a third of a pixel
            near = red[max(0, y - 6) : y + 10, max(0, x - 6) : x + 10]
            yy, xx = np.mgrid[max(0, y - 6) : y + 10, max(0, x - 6) : x + 10][:, : near.shape[0], : near.shape[1]]
            at = np.array([(near * yy).sum(), (near * xx).sum()]) / near.sum()
            assert np.abs(at - (y + 1.5, x + 1.5)).max() < 0.34, (seed, y, x, at)
        lum = px[..., :3].mean(-1)
        moved = [_shift(lum[y : y + 24, x : x + 24], ref, (y, x), 10) for y in (60, 108, 156) for x in (80, 148, 216)]
        reach = max(max(abs(dy), abs(dx)) for dy, dx in moved)
        assert reach <= 2 * scenes.WAVE_AMPLITUDE[1] * w + 1, (seed, moved)
        most = max(most, reach)
        inwards += bool((px[2:-2, 2:-2, 3] < 128).any())
    assert most >= 2 and inwards >= 1, (most, inwards)
    scene = scenes.make_scene(target, others, np.random.default_rng(6), kind="lightbox", variant="wavy")
    assert scene.image.size == (1600, 1200) and 0.1 <= scene.target_fraction <= 0.4
