"""Every package the requirements pin earns its place: the code imports it (or it is a pin another package needs)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_NAMES = {"mxnet-cu112": "mxnet", "opencv-python": "cv2", "Pillow": "PIL", "tensorflow-cpu": "tensorflow",
                "google-crc32c": "google_crc32c"}
PINNED_FOR_OTHERS = {"protobuf"}  # mxboard 0.1.0 breaks with protobuf 4+ (docs/mxnet-notes.md)


def pinned_packages():
    names = set()
    for file in os.listdir(ROOT):
        if file.startswith("requirements") and file.endswith(".txt"):
            with open(os.path.join(ROOT, file)) as f:
                names |= {re.split(r"[=<>]", line.strip())[0] for line in f
                          if line.strip() and not line.startswith(("#", "-r"))}
    return names


def imported_modules():
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            if file.endswith(".py"):
                with open(os.path.join(folder, file)) as f:
                    found |= set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", f.read(), re.MULTILINE))
    return found


def test_every_pinned_package_is_imported_somewhere():
    imported = imported_modules()
    unused = [name for name in pinned_packages() - PINNED_FOR_OTHERS
              if IMPORT_NAMES.get(name, name) not in imported]
    assert unused == [], "pinned but imported nowhere: %s" % unused
