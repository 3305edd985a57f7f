"""TVMScript parsing without rescanning every loaded module (saddc/tvmscript_parsing.py)."""

import inspect
import sys

from tvm.script import tirx as T

from saddc.tvmscript_parsing import cache_fileless_frames


class CountingLookups(dict):
    """inspect's module-name-to-file cache, counting lookups: ``inspect.getmodule`` makes one per
    module in ``sys.modules`` each time it rescans them."""

    lookups = 0

    def get(self, *args):
        self.lookups += 1
        return super().get(*args)


def stack_of(frame) -> list:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def test_fileless_frames_resolve_as_before_without_rescanning_every_module(monkeypatch, tmp_path):
    """Frames of a frozen module (any import's) and of an expression TVMScript evaluates have no
    module; inspect now finds that in its cache instead of rescanning sys.modules for each."""
    parsed_from = []

    def four():
        parsed_from.append(sys._getframe())  # pylint: disable=protected-access
        return 4

    @T.prim_func
    def kernel(a: T.Buffer((4,), "float32")):
        for i in range(four()):  # evaluated by the parser
            a[i] = T.float32(0)

    (tmp_path / "keeps_its_frame.py").write_text("import sys\nFRAME = sys._getframe()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import keeps_its_frame  # pylint: disable=import-outside-toplevel,import-error

    fileless = [frame for start in (*parsed_from, keeps_its_frame.FRAME) for frame in stack_of(start)
                if frame.f_code.co_filename.startswith("<")]
    assert {"<ast>", "<frozen importlib._bootstrap>"} <= {frame.f_code.co_filename for frame in fileless}

    monkeypatch.setattr(inspect, "modulesbyfile", {})
    monkeypatch.setattr(inspect, "_filesbymodname", CountingLookups())
    rescanned = [inspect.getmodule(frame) for frame in fileless]
    assert inspect._filesbymodname.lookups > 100 * len(fileless)  # pylint: disable=protected-access

    cache_fileless_frames()
    monkeypatch.setattr(inspect, "_filesbymodname", CountingLookups())
    cached = [inspect.getmodule(frame) for frame in fileless]
    for frame in fileless:
        inspect.getframeinfo(frame)
    assert inspect._filesbymodname.lookups == 0  # pylint: disable=protected-access
    assert cached == rescanned
