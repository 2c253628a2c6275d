"""The classroom page's screenshot for the README: serve a model, open the page in headless Chromium, ask, save.

    python docs/screenshot_page.py --model checkpoints/tiny/final --out docs/img/classroom_page.png

Needs Debian's chromium and chromium-driver, and selenium (requirements-dev.txt). tests/test_page.py drives the
page with the same two helpers, browser() and ask_and_wait().
"""
from __future__ import annotations

import os
import shutil
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from anywhere

from llava_mini import cli  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def browser(width: int = 1280, height: int = 900):
    """Headless Chromium under Selenium (as root, so without the sandbox)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (CHROMIUM and DRIVER):
        raise RuntimeError("no headless browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def ask_and_wait(driver, question: str, answers_before: int, timeout: float = 120) -> str:
    """Type a question, send it, and wait until its streamed answer is complete; returns the answer's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.find_element(By.ID, "question").send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, timeout).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message.assistant")) > answers_before
        and d.find_elements(By.CSS_SELECTOR, ".message.assistant .text")[-1].text.strip()
        and d.find_element(By.ID, "send").is_enabled())
    return driver.find_elements(By.CSS_SELECTOR, ".message.assistant .text")[-1].text


def main(argv=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from llava_mini.loading.model_folder import load_checkpoint
    from llava_mini.serving.openai_api import Engine
    from llava_mini.serving.server import make_server
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="checkpoints/tiny/final")
    p.add_argument("--images", default="data/shapes/images/test")
    p.add_argument("--pick", type=cli.non_negative_int, default=3, help="which gallery image to choose")
    p.add_argument("--questions", nargs="+", default=["Describe the image.", "How many shapes are there?"])
    p.add_argument("--out", default="docs/img/classroom_page.png")
    args = p.parse_args(argv)
    model, tokenizer, template = load_checkpoint(args.model)
    server = make_server(Engine(model, tokenizer, template, "tiny"), port=0, quiet=True, image_dir=args.images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = browser()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) > args.pick)
        driver.find_elements(By.CSS_SELECTOR, "#gallery img")[args.pick].click()
        for i, question in enumerate(args.questions):
            print(f"{question} -> {ask_and_wait(driver, question, i)}")
            if i == 0:
                wait.until(lambda d: d.find_element(By.ID, "heatmap").is_displayed())
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    cli.run(main)
