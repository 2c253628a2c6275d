"""The classroom page in a real browser (headless Chromium driven by Selenium): load it, choose an image, ask,
wait for the streamed answer and the heat map, ask blind, and save a screenshot; behind an API key, the page asks
for the key and then chats. .ci/run installs Debian's chromium and chromium-driver; without them this test is
skipped and says why."""
import threading

import pytest
from conftest import load_script
from PIL import Image
from test_chat import make_tiny_checkpoint

from llava_mini.loading.model_folder import load_checkpoint
from llava_mini.serving.classroom import GALLERY_SIZE
from llava_mini.serving.openai_api import Engine
from llava_mini.serving.server import make_server

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
page = load_script("docs/screenshot_page.py")          # browser() and ask_and_wait(), shared with the screenshot
pytestmark = pytest.mark.skipif(not (page.CHROMIUM and page.DRIVER),
                                reason="no headless browser: apt-get install chromium chromium-driver")


def start_server(tmp_path, api_key=None):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(GALLERY_SIZE):           # a full gallery: it is still loading when the test clicks and asks
        Image.new("RGB", (32, 32), (10 * i, 30, 200 - 5 * i)).save(images / f"scene_{i:02d}.png")
    model, tokenizer, template = load_checkpoint(make_tiny_checkpoint(str(tmp_path / "ckpt")))
    server = make_server(Engine(model, tokenizer, template, "tiny", max_new_tokens=10), port=0, quiet=True,
                         image_dir=str(images), api_key=api_key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_page_chats_streams_draws_the_heat_map_and_asks_blind(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server = start_server(tmp_path)
    driver = page.browser()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "parameters" in d.find_element(By.ID, "model-name").text)
        assert "tiny" in driver.find_element(By.ID, "model-name").text
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) > 1)
        driver.find_elements(By.CSS_SELECTOR, "#gallery img")[1].click()            # at once, as a student would
        answer = page.ask_and_wait(driver, "What colour is the square?", 0)
        assert answer and not answer.startswith("(")                 # an answer, not an error in brackets
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img[src^='data:']")) == GALLERY_SIZE)
        # the gallery finished loading without taking the choice back or clearing the conversation
        gallery = driver.find_elements(By.CSS_SELECTOR, "#gallery img")
        assert [i for i, img in enumerate(gallery) if "chosen" in img.get_attribute("class")] == [1]
        assert driver.find_element(By.ID, "image").get_attribute("src") == gallery[1].get_attribute("src")
        assert len(driver.find_elements(By.CSS_SELECTOR, ".message")) == 2
        wait.until(lambda d: d.find_element(By.ID, "heatmap").is_displayed())
        assert driver.find_element(By.ID, "heatmap").get_attribute("src").startswith("data:image/png;base64,")
        driver.find_element(By.ID, "blind").click()
        blind = page.ask_and_wait(driver, "And now?", 1)
        assert blind and "(blind)" in driver.find_elements(By.CSS_SELECTOR, ".message.user")[-1].text
        driver.find_element(By.ID, "reset").click()
        assert not driver.find_elements(By.CSS_SELECTOR, ".message")
        assert driver.save_screenshot(str(tmp_path / "page.png")) and (tmp_path / "page.png").stat().st_size > 1000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def test_the_page_asks_for_the_servers_api_key_and_sends_it(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server = start_server(tmp_path, api_key="sk-classroom-7")
    driver = page.browser()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "key-form").is_displayed())
        assert "loading" in driver.find_element(By.ID, "model-name").text          # nothing loaded without the key
        driver.find_element(By.ID, "api-key").send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait.until(lambda d: "refused" in d.find_element(By.ID, "key-message").text)
        driver.find_element(By.ID, "api-key").clear()
        driver.find_element(By.ID, "api-key").send_keys("sk-classroom-7")
        driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait.until(lambda d: "parameters" in d.find_element(By.ID, "model-name").text)
        assert not driver.find_element(By.ID, "key-form").is_displayed()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img[src^='data:']")) == GALLERY_SIZE)
        answer = page.ask_and_wait(driver, "What colour is the square?", 0)
        assert answer and not answer.startswith("(")                 # an answer, not the 401 in brackets
        assert "sk-classroom-7" not in driver.current_url
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
