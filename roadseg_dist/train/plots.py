"""The learning curves of a run as one PNG: train loss and val mIoU / pixel accuracy per epoch."""
from __future__ import annotations

from roadseg_dist import reports


def render_curves(records: list[dict], title: str = "") -> bytes:
    from matplotlib.ticker import MaxNLocator

    plt = reports.pyplot()

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", color="tab:red")
    ax_loss.set(xlabel="epoch", ylabel="train loss (CE)", title="training loss")
    ax_val.plot(epochs, [r["val_miou"] for r in records], "o-", label="val mIoU")
    ax_val.plot(epochs, [r["val_pixel_acc"] for r in records], "s--", label="val pixel acc")
    ax_val.set(xlabel="epoch", ylim=(0, 1), title="validation")
    ax_val.legend(loc="lower right")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return reports.figure_png(fig)
