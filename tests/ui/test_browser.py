"""The app in a real browser: headless Debian chromium driven by Selenium (system chromedriver, offline).

Types a question and reads the answer, runs a symptom conversation, speaks a WAV into the page through
Chrome's fake microphone (`--use-file-for-fake-audio-capture`) and reads the transcript, uploads two
pictures and reads their captions, and opens the status page. A screenshot of each page goes to
$NUI_SCREENSHOT_DIR (default: the test's tmp folder); `docs/ui/` holds the committed ones:

    NUI_SCREENSHOT_DIR=docs/ui pytest -q tests/ui/test_browser.py
    NUI_UI_TEST_REPO=/path/to/repo/with/diagnosis NUI_SCREENSHOT_DIR=docs/ui pytest -q tests/ui/test_browser.py
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.captioner_tiny import CAPTIONS, picture
from tests.ui.conftest import say

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (bash scripts/setup.sh installs them)"),
]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SPOKEN = "what is in this picture"
WAIT_S = 30


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The WAV Chrome plays as its microphone (in a loop, from when the page opens the microphone):
    1 s of silence (the recorder starts late on a busy machine), the sentence, 4 s of silence."""
    folder = tmp_path_factory.mktemp("fake_mic")
    speech, rate = sf.read(say(SPOKEN, folder / "speech.wav", voice="en-us"), dtype="int16")
    silence = np.zeros(rate, dtype=np.int16)
    out = folder / "mic.wav"
    sf.write(out, np.concatenate([silence, speech, np.zeros(4 * rate, dtype=np.int16)]), rate, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("NUI_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(fake_mic: Path) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_mic}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda _: condition(), message=what)


def css(driver: Any, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def tab(driver: Any, name: str) -> None:
    [button] = [b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == name]
    button.click()


def test_pages_in_chromium(browser: Any, app_url: str, shots: Path, tmp_path: Path) -> None:
    d = browser
    d.get(app_url)
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#assistant-text textarea"), "the assistant page")

    # The fake microphone first: while the page plays a spoken reply, Chrome's echo canceller (on for
    # every getUserMedia capture) would scramble the fake microphone's input. Record ~3.5 s, stop ->
    # transcript and reply.
    started = time.monotonic()
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#assistant-mic button.record-button"), "the record button")
    css(d, "#assistant-mic button.record-button").click()
    time.sleep(3.5)
    css(d, "#assistant-mic button.stop-button").click()
    heard = wait_for(d, lambda: css(d, "#assistant-transcript textarea").get_attribute("value"), "a transcript")
    # The browser resamples and filters the fake microphone (echo cancelling, noise suppression, gain
    # control), and the small model was trained on clean synthesized speech: allow one misheard word of five.
    assert len(set(heard.split()) & set(SPOKEN.split())) >= 4, heard
    wait_for(d, lambda: heard in css(d, "#assistant-chat").text and len(css(d, "#assistant-chat").text) >
             len(heard) + 20, "the spoken question's answer")
    assert time.monotonic() - started < WAIT_S

    # A picture, then the same question typed -> its caption.
    red = tmp_path / "red.png"
    Image.fromarray(picture("red", size_px=96)).save(red)
    css(d, "#assistant-picture input[type=file]").send_keys(str(red))
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#assistant-picture img"), "the picture preview")
    css(d, "#assistant-text textarea").send_keys("what is in this picture?")
    css(d, "#assistant-send").click()
    wait_for(d, lambda: f"I think it shows {CAPTIONS['red']}." in css(d, "#assistant-chat").text, "the caption")

    # Typed question -> answer in the chat.
    css(d, "#assistant-text textarea").send_keys("what can you do?")
    css(d, "#assistant-send").click()
    wait_for(d, lambda: "three things" in css(d, "#assistant-chat").text, "the typed question's answer")
    d.save_screenshot(str(shots / "assistant.png"))

    # Symptom checker: a conversation, the bar chart and the notice.
    tab(d, "Symptom checker")
    notice = css(d, "#symptom-notice").text
    assert "not medical advice" in notice
    css(d, "#symptom-text textarea").send_keys("I have a fever and a cough")
    css(d, "#symptom-send").click()
    question = wait_for(d, lambda: css(d, "#symptom-question textarea").get_attribute("value"), "a first question")
    css(d, "#symptom-yes").click()
    wait_for(d, lambda: "Conditions that fit best so far" in css(d, "#symptom-chat").text, "a ranking")
    assert question in css(d, "#symptom-chat").text
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#symptom-chart canvas, #symptom-chart svg"), "the chart")
    assert css(d, "#symptom-notice").is_displayed()
    d.save_screenshot(str(shots / "symptoms.png"))

    # Images: two pictures at once -> n-best captions.
    tab(d, "Images")
    paths = []
    for kind in ("red", "blue"):
        paths.append(tmp_path / f"{kind}.png")
        Image.fromarray(picture(kind, size_px=96)).save(paths[-1])
    css(d, "#image-files input[type=file]").send_keys("\n".join(str(p) for p in paths))
    wait_for(d, lambda: css(d, "#image-files").text.count(" KB") == 2, "the uploads")  # name, size per file
    css(d, "#image-describe").click()
    table = wait_for(d, lambda: CAPTIONS["blue"] in css(d, "#image-captions").text and css(d, "#image-captions"),
                     "the captions")
    assert CAPTIONS["red"] in table.text
    d.save_screenshot(str(shots / "images.png"))

    # Status: services, models, latency.
    tab(d, "Status")
    css(d, "#status-refresh").click()
    wait_for(d, lambda: "speech_ctc" in css(d, "#status-models").text, "the models table")
    assert "nui.v1.Speech" in css(d, "#status-services").text
    d.save_screenshot(str(shots / "status.png"))
