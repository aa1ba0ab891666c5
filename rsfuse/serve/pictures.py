"""The page's pictures (``POST /v1/rsfuse/viz``): `rsfuse.viz`'s router weights and gate maps for one prompt, drawn
on the image scaled to at most `FIGURE_SIDE` pixels a side (a 4000-px scene drawn whole took seconds)."""

import asyncio
import io
import logging
import time

from PIL import Image
from starlette.concurrency import run_in_threadpool

from rsfuse.serve.errors import APIError

__all__ = ["FIGURE_SIDE", "draw_pictures"]

log = logging.getLogger("rsfuse.serve")
FIGURE_SIDE = 768


async def draw_pictures(scheduler, model, encoder, prompt, question: str, answer: str, lock) -> bytes:
    """PNG of the router weights and gate maps of ``prompt``'s prefill (recorded on the worker thread, drawn in a
    pool thread under ``lock``), with the question and the answer as the caption."""
    from rsfuse.viz import injection_figure, record_injection, stack_labels  # noqa: PLC0415

    def record():
        return record_injection(model, max_new_tokens=1, eos_token_id=min(encoder.eos_ids),
                                **encoder.batch([prompt]))

    try:
        records, _ = await asyncio.wrap_future(scheduler.call(record))
    except ValueError as error:
        raise APIError(400, str(error), code="no_injectors") from None

    answer = "".join(char for char in answer if char.isprintable())  # no control characters in the caption

    def draw() -> bytes:
        try:
            import matplotlib.pyplot as plt  # noqa: PLC0415
        except ImportError:
            raise APIError(501, "the pictures need matplotlib (pip install rsfuse[serve])", type="server_error",
                           code="matplotlib_missing") from None
        with lock:  # pyplot's state is global
            view = prompt.image.copy()
            view.thumbnail((FIGURE_SIDE, FIGURE_SIDE), Image.BILINEAR)
            figure = injection_figure(encoder.images.pad_to_square(view), records, stack_labels(model.config),
                                      question=question, answer=answer)
            buffer = io.BytesIO()
            try:
                figure.savefig(buffer, format="png", dpi=80)
            finally:
                plt.close(figure)
        return buffer.getvalue()

    started = time.monotonic()
    png = await run_in_threadpool(draw)
    log.debug("rsfuse serve: picture drawn in %.2f s", time.monotonic() - started)
    return png
