"""Screenshot one graph of the published asv history in headless Chromium.

    python benchmarks/screenshot.py docs/asv-history.png \\
        "bench_peers.DeformConv2dVsPeers.track_forward_vs_torchvision?p-shape='N2-C64-56'&p-backend='cpu'"

asv's pages load jQuery, flot and Bootstrap from CDNs. So that the page renders
on a machine that reaches only package registries, this serves a copy of
.asv/html with the same libraries taken from their npm packages. Needs
``chromium`` and ``npm`` on the PATH; Pillow, if installed, shrinks the PNG.
"""

import argparse
import http.server
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The file each CDN URL of asv's index.html names -> (npm package, path inside it).
# stupidtable 1.0.1 is not on npm; 1.1.3 is its compatible successor.
LIBRARIES = {
    "jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "jquery.flot.min.js": ("flot@0.8.3", "jquery.flot.js"),
    "jquery.flot.time.min.js": ("flot@0.8.3", "jquery.flot.time.js"),
    "jquery.flot.selection.min.js": ("flot@0.8.3", "jquery.flot.selection.js"),
    "jquery.flot.categories.min.js": ("flot@0.8.3", "jquery.flot.categories.js"),
    "jquery.flot.orderBars.js": ("flot-orderbars@1.0.0", "js/jquery.flot.orderBars.js"),
    "stupidtable.min.js": ("stupid-table-plugin@1.1.3", "stupidtable.min.js"),
    "md5.min.js": ("blueimp-md5@2.19.0", "js/md5.min.js"),
    "bootstrap.min.js": ("bootstrap@3.1.1", "dist/js/bootstrap.min.js"),
    "bootstrap.min.css": ("bootstrap@3.1.1", "dist/css/bootstrap.min.css"),
}
CDN = re.compile(r'(src|href)="https://[^"]+/([^"/]+)"')


def offline_copy(html, site, work):
    """Copy asv's site into ``site`` with each CDN library served from vendor/."""
    shutil.copytree(html, site)
    vendor = site / "vendor"
    vendor.mkdir()
    tarballs = {}
    for name, (package, inner) in LIBRARIES.items():
        if package not in tarballs:
            packed = subprocess.run(["npm", "pack", "--silent", package], cwd=work,
                                    check=True, capture_output=True, text=True)
            tarballs[package] = work / packed.stdout.strip().splitlines()[-1]
        with tarfile.open(tarballs[package]) as tarball:
            (vendor / name).write_bytes(tarball.extractfile(f"package/{inner}").read())
    page = (site / "index.html").read_text()
    page = CDN.sub(lambda m: f'{m.group(1)}="vendor/{m.group(2)}"'
                   if m.group(2) in LIBRARIES else m.group(0), page)
    # The local files are not byte-identical to the CDN's minified ones.
    page = re.sub(r'\s(integrity|crossorigin|referrerpolicy)="[^"]*"', "", page)
    (site / "index.html").write_text(page)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def screenshot(site, fragment, out, size):
    handler = lambda *a: _QuietHandler(*a, directory=str(site))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/#{fragment}"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                            "--hide-scrollbars", "--virtual-time-budget=15000",
                            f"--window-size={size}", f"--screenshot={out}", url],
                           check=True, capture_output=True, timeout=180)
    finally:
        server.shutdown()


def shrink(png):
    try:
        from PIL import Image
    except ImportError:
        return
    Image.open(png).convert("RGB").quantize(colors=64).save(png, optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("fragment", help="what follows '#' in the page's address")
    parser.add_argument("--html", type=pathlib.Path, default=ROOT / ".asv" / "html")
    parser.add_argument("--size", default="1200,620", help="window width,height")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        offline_copy(args.html, work / "site", work)
        screenshot(work / "site", args.fragment, args.out.resolve(), args.size)
    shrink(args.out)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
