"""Render what an AutoSegMSK user sees, without the Slicer application: the logic on a real scene (slicer-core),
then the closed surfaces in 3D (VTK offscreen) and the input with the confidence overlay (matplotlib).

    python scripts/render_autosegmsk_result.py ../shared/data/knee_mese_t2_dicom -o build/autosegmsk_view
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AutoSegMSK"))
from AutoSegMSKLib import AutoSegMSKLogic  # noqa: E402
from AutoSegMSKLib.nodes import add_volume_node, node_array  # noqa: E402
from SlicerMSKCommon.segmentations import label_volume, segment_ids  # noqa: E402
from mskai.dicom import plan_volumes, read_volume, scan_source  # noqa: E402


def render_surfaces(segmentation, path, size=(900, 700)):
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1, 1, 1)
    for segment_id in segment_ids(segmentation):
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        polydata = vtk.vtkPolyData()
        if not segmentation.GetClosedSurfaceRepresentation(segment_id, polydata) or not polydata.GetNumberOfPoints():
            continue
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(polydata)
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segment.GetColor())
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)
    camera.SetPosition(-1, -0.6, 0.2)  # from the patient's right, anterior
    camera.SetFocalPoint(0, 0, 0)
    renderer.ResetCamera()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


def render_confidence(scene, volume, segmentation, confidence, rows, path):
    image, conf = node_array(volume).astype(float), node_array(confidence).astype(float) / 100
    labels = label_volume(scene, segmentation, volume).array
    k = int(np.argmax((labels > 0).sum(axis=(0, 1))))
    colors = matplotlib.colors.LinearSegmentedColormap.from_list("conf", [(1, 0, 0), (1, 1, 0), (0, 1, 0)])
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, overlay in zip(axes, ("labels", "confidence")):
        ax.imshow(image[:, :, k].T, cmap="gray")
        if overlay == "confidence":
            # as in Slicer: the display node's threshold leaves certain voxels (and 0, outside a slab) clear
            display = confidence.GetDisplayNode()
            low, high = display.GetLowerThreshold() / 100, display.GetUpperThreshold() / 100
            shown_values = np.ma.masked_outside(conf[:, :, k].T, low, high)
            shown = ax.imshow(shown_values, cmap=colors, vmin=0, vmax=1, alpha=0.5)
            fig.colorbar(shown, ax=ax, fraction=0.046, label="confidence")
        else:
            for value, colour in ((1, "gold"), (2, "orangered"), (3, "limegreen"), (4, "royalblue"), (5, "magenta")):
                if np.any(labels[:, :, k] == value):
                    ax.contour((labels[:, :, k] == value).T, [0.5], colors=colour, linewidths=1)
        ax.set_title(f"{overlay}, slice {k}")
        ax.axis("off")
    text = ", ".join(f"{r['segment']} {r['mean_confidence']:.2f}" for r in rows if r["mean_confidence"] >= 0)
    fig.suptitle(f"least certain first: {text}")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="DICOM folder or database")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (series,) = [s for s in scan_source(args.source).series if s.is_image][:1]
    scene = slicer.vtkMRMLScene()
    volume = add_volume_node(scene, read_volume(plan_volumes(series)[0]), "input")
    logic = AutoSegMSKLogic(scene)
    segmentation = logic.segmentVolume(volume, confidence=True, device="cpu")
    result = logic.lastResult
    from AutoSegMSKLib.nodes import table_rows

    rows = sorted(table_rows(result["table"]), key=lambda r: r["mean_confidence"] if r["mean_confidence"] >= 0 else 2)
    render_surfaces(segmentation, out / "surfaces_3d.png")
    render_confidence(scene, volume, segmentation, result["confidence"], rows, out / "confidence_overlay.png")
    for row in rows:
        print(row)
    print(f"least certain: {result['leastCertain']}; wrote {out}/surfaces_3d.png and confidence_overlay.png")


if __name__ == "__main__":
    main()
