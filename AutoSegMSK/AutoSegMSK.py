"""AutoSegMSK: lower-limb bone segmentation of MR series (Slicer glue over the mskai engine)."""

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import mskai


class AutoSegMSK(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "AutoSegMSK"
        parent.categories = ["Segmentation"]
        parent.contributors = ["SlicerAutoSegMSK developers"]
        parent.helpText = (
            "Segments the lower-limb bones (tibia, femur, fibula, pelvis, patella) in MR series from the "
            "DICOM database. " + mskai.DEMO_NOTICE
        )
        parent.acknowledgementText = "Sample knee data: pymskt project (MIT licence)."


class AutoSegMSKWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegMSK.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.statusLabel.text = mskai.DEMO_NOTICE
        self.logic = AutoSegMSKLogic()


class AutoSegMSKLogic(ScriptedLoadableModuleLogic):
    """Runs the mskai engine; holds no widget references."""

    def engineVersion(self):
        """Version of the mskai engine this module drives."""
        return mskai.__version__


class AutoSegMSKTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.assertTrue(AutoSegMSKLogic().engineVersion())
