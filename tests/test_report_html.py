"""report.html in a real browser (Debian's chromium, driven by selenium through
chromedriver): the page loads with no console error and no network request, its status
table has exactly report.json's rows, and clicking a lost range on a disk map lands on
the list of the files on it.  Plus size and escaping bounds without a browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pvfs.cli import main
from pvfs.discover import discover
from pvfs.htmlreport import MAX_DRAWN, _coarsen, report_html

from conftest import IN_CI, ROOT, ext4_disk_with_one_damaged_file, gpt_disk_with_bad_block

EXAMPLES = ROOT / "examples"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _scan(capsys, tmp_path, *inputs):
    """``pvfs scan --json --html FILE``: the page and the JSON of the same run."""
    page = tmp_path / "report.html"
    capsys.readouterr()
    main(["scan", "--json", "--no-progress", "--html", str(page), *map(str, inputs)])
    return page, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if IN_CI:
            pytest.fail("chromium and chromium-driver are not installed (scripts/setup.sh)")
        pytest.skip("chromium / chromium-driver not installed")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _load(browser, page: Path):
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    # self-contained: the browser fetched nothing besides the page itself
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)") == []


def _dom_rows(browser):
    from selenium.webdriver.common.by import By

    out = []
    for tr in browser.find_elements(By.CSS_SELECTOR, "#status tbody tr"):
        td = tr.find_elements(By.TAG_NAME, "td")
        out.append({"id": td[0].text, "type": td[1].text, "name": td[2].text,
                    "status": tr.get_attribute("data-status"),
                    "kind": tr.get_attribute("data-kind"),
                    "files": tr.get_attribute("data-files"),
                    "bytes": tr.get_attribute("data-bytes"),
                    "word": td[3].text, "why": td[4].text})
    return out


def _json_rows(doc):
    from pvfs.proxmox.status import row_word

    return [{"id": g["id"], "type": g["type"], "name": g["name"], "status": g["status"],
             "kind": g["kind"], "files": "" if g["files"] is None else str(g["files"]),
             "bytes": str(g["bytes"]),
             "word": row_word(g),
             "why": g["why"]} for g in doc["guests"]]


def test_damaged_example_in_chromium(browser, capsys, tmp_path):
    """examples/damaged (qemu-img qcow2, ddrescue mapfile over home/demo/hello.txt)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page, doc = _scan(capsys, tmp_path, EXAMPLES / "damaged" / "vm-102-disk-0.qcow2")
    _load(browser, page)
    assert _dom_rows(browser) == _json_rows(doc) and doc["guests"][0]["status"] == "PARTIAL"
    rect = browser.find_element(By.CSS_SELECTOR, "#d0 svg a rect.lost")
    ActionChains(browser).move_to_element(rect).click().perform()
    assert browser.current_url.endswith("#r0-0")
    target = browser.execute_script("return document.querySelector(':target')")
    assert target.get_attribute("id") == "r0-0"
    assert "0x271800 + 0x400" in target.text
    assert "vms/102/disk-0.files/p2/home/demo/hello.txt" in target.text
    assert target.is_displayed()


def test_ceph_osd_missing_in_chromium(browser, capsys, tmp_path, ceph_root):
    """Ceph with one OSD of three: seven VMs, four PARTIAL, one DEGRADED (its replicas are on the missing OSDs), two LOST; the DOM rows equal
    report.json's; every lost range of VM 102 links to a list entry that exists."""
    from selenium.webdriver.common.by import By

    page, doc = _scan(capsys, tmp_path, ceph_root / "osd.2" / "block")
    _load(browser, page)
    rows = _dom_rows(browser)
    assert rows == _json_rows(doc)
    assert [r["status"] for r in rows] == ["PARTIAL"] * 4 + ["DEGRADED", "LOST", "LOST"]
    sec = browser.find_element(By.ID, "g-vm-102")
    links = sec.find_elements(By.CSS_SELECTOR, "svg a")
    assert len(links) == 2
    for a in links:
        frag = a.get_dom_attribute("href").removeprefix("#")
        li = browser.find_element(By.ID, frag)
        assert li.tag_name == "li" and "lost" in li.text
    # the files on the lost ranges: together the three files-damaged names
    text = sec.text
    for name in ("data", "Grüße.txt"):
        assert f"vms/102/disk-0.files/p1/{name}" in text


def test_hostile_names_are_escaped(tmp_path):
    """A damaged file named like markup shows as text, never as an element."""
    evil = '<img src=x onerror=alert(1)>&"\nx'
    img, disk = ext4_disk_with_one_damaged_file(tmp_path, evil)
    # the damaged block is inode 12's: ncheck confirms it is the hostile name
    check = subprocess.run(["debugfs", "-R", "ncheck 12", str(img)], check=True,
                           capture_output=True, text=True).stdout
    assert "onerror" in check
    page = report_html(discover([str(disk)]))
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;\\x0ax" in page
    assert page.count("&lt;img") >= 2  # in the damaged-file list and the range's list


def test_ranges_drawn_are_capped():
    """100,000 bad sectors spread over a disk draw at most MAX_DRAWN rects, covering all."""
    size = 1 << 40
    ranges = [(i * (size // 100_000), 512) for i in range(100_000)]
    out = _coarsen(ranges, size, MAX_DRAWN)
    assert 0 < len(out) <= MAX_DRAWN
    assert out[0][0] == 0 and out[-1][0] + out[-1][1] == ranges[-1][0] + 512
    covered = sum(n for _o, n in out)
    assert covered >= 100_000 * 512


def test_html_option_is_checked_before_any_work(tmp_path, capsys):
    """--html into a missing directory, or onto an input: exit 2, the value named."""
    img = EXAMPLES / "damaged" / "vm-102-disk-0.qcow2"
    assert main(["scan", "--html", str(tmp_path / "no" / "r.html"), str(img)]) == 2
    assert "--html" in capsys.readouterr().err
    copy = tmp_path / "in.qcow2"
    shutil.copyfile(img, copy)
    before = copy.read_bytes()
    assert main(["scan", "--html", str(copy), str(copy)]) == 2
    assert "is an input" in capsys.readouterr().err and copy.read_bytes() == before


def test_subtract_draws_each_byte_once():
    from pvfs.htmlreport import _subtract

    assert _subtract([(0, 100)], [(10, 10), (50, 60)]) == [(0, 10), (20, 30)]
    assert _subtract([(0, 100)], []) == [(0, 100)]
    assert _subtract([(0, 10), (20, 10)], [(0, 30)]) == []


def test_page_stays_small_with_many_bad_sectors(tmp_path):
    """A 1 GiB raw VM disk whose ddrescue mapfile (GNU ddrescue's format) marks 20,000
    scattered sectors bad: the page draws at most MAX_DRAWN ranges and stays small."""
    disk = tmp_path / "vm-100-disk-0.raw"
    size = 1 << 30
    with open(disk, "wb") as f:
        f.truncate(size)
    step = size // 20_000
    lines = ["# Mapfile. Created by GNU ddrescue", "0x0 + 1"]
    for i in range(20_000):
        lines.append(f"{i * step:#x} 0x200 -")
        lines.append(f"{i * step + 512:#x} {step - 512:#x} +")
    Path(str(disk) + ".map").write_text("\n".join(lines) + "\n")
    ctx = discover([str(disk)])
    page = report_html(ctx)
    assert page.count('<rect class="lost"') <= MAX_DRAWN
    assert len(page) < 200_000, len(page)
    assert "PARTIAL (9.8 MiB)" in page  # 20,000 x 512 bytes
    assert "9.8 MiB lost in 20000 ranges between these offsets" in page  # merged, and said so


def test_a_damaged_disk_no_guest_owns_gets_its_map(tmp_path):
    """sdb.img (no Proxmox name): ext4 in a GPT partition, one bad 4 KiB block in big.bin
    (placed by debugfs): the page has no guest, but the disk's map and the file on it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(bytes(range(256)) * 4096 * 4)
    img = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(src),
                    str(img), "16M"], check=True)
    out = subprocess.run(["debugfs", "-R", "bmap /big.bin 100", str(img)], check=True,
                         capture_output=True, text=True).stdout
    bad = (1 << 20) + int(out.split()[-1]) * 4096
    disk = tmp_path / "sdb.img"
    gpt_disk_with_bad_block(img, disk, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", bad)
    page = report_html(discover([str(disk)]))
    assert "No VM or container found." in page and "Other volumes with damage" in page
    assert f"<b>lost</b> <code>{bad:#x} + 0x1000</code>" in page
    assert "storage/files/sdb.img/disk.files/p1/big.bin" in page
