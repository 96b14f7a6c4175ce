"""Synthetic sagittal knee MR with graded anterior cruciate ligaments (ACL), for the ACL classifier.

No labelled knee MR images can be used here, so the classifier learns from and is tested on these renders.
Each case is one real knee shape (femur and tibia of an OAI subject, ``mskai.synth.real_shapes``) dressed
with a tissue model built around it once per subject and process:

- bones with a cortical rim and marrow; a patella transplanted from the bundled pymskt knee label map (MIT),
  scaled and seated on the trochlea; a fibular head; femoral, tibial and patellar cartilage; menisci
  (wedges at the rim of the tibial plateaus);
- the intercondylar notch found on the femur (``notch_landmarks``: the deepest intercondylar point between
  the condyles per coronal section, the roof = Blumensaat line, the walls), so the cruciates sit where they
  do in that knee; which condyle is lateral is read from the shape (``lateral_side``);
- Hoffa's fat pad, patellar and quadriceps tendons, prefemoral and suprapatellar fat, the popliteal fossa
  with artery and vein, muscle, subcutaneous fat and skin; recesses that fill with joint fluid.

Per case (``synthetic_acl_knee``) the ACL and PCL are drawn as bands along curved paths between their
attachments, with the grade's lesion; then a random acquisition renders the anatomy: right or left knee,
pose, oblique-sagittal slices of 3-4.5 mm (20-40 of them), a 256 or 320 matrix at 0.4-0.66 mm, a contrast
(PD, PD fat-sat, T2 fat-sat, T1, T2), tissue texture (trabeculae, muscle striae, fat septa), a bias field and
Rician noise. The random stream is split at the start
(subject, scene, ligament, lesion, fluid, noise), so for the same generator state the grades differ only in
the ligament and in the joint fluid that goes with a tear: same subject, pose, contrast, noise, field of
view and slice count.

Grades (``GRADES``; label = index): 0 healthy, 1 minor strain (thickened, oedematous, continuous fibres),
2 partial rupture (thinned, a partial gap across part of the band, some fluid), 3 complete rupture (a gap
across the whole band, a wavy sagging distal stump, a short or absent femoral stump, fluid in the notch, a
joint effusion). Binary (``mskai.acl.to_binary``): intact = 0 (healthy, strain) versus torn = 1 (partial, complete),
as MRNet's "ACL tear" counts partial tears as tears. Effusion also occurs with intact ligaments (less often),
so it is a hint, not a give-away.

Data: OAI bone masks (Apache-2.0; OAI images, NIH) and the pymskt knee label map (MIT); keep
../shared/data/NOTICE.md with anything derived from them. Images are synthetic: demo, not for clinical use.

Modules, lowest first: ``tissues`` (tissue classes, contrasts, planes, ``KneeAnatomy``), ``geometry``,
``landmarks``, ``bones`` and ``soft_tissue`` (the build steps), ``knee_model`` (``build_anatomy``, ``anatomy``),
``ligaments``, ``acquisition`` (``draw_case``, ``acquire`` and the entry points).
"""

from mskai.acl import GRADES, to_binary  # the task's one class table
from mskai.synth.acl_knee.acquisition import (Acquisition, KneeCase, acquire, draw_case, synthetic_acl_knee,
                                              write_acl_study)
from mskai.synth.acl_knee.knee_model import (ANATOMY_VERSION, OAI_FOLDER, acl_shape_subjects, anatomy,
                                             build_anatomy)
from mskai.acl.landmarks import lateral_side, notch_landmarks
from mskai.synth.acl_knee.tissues import PLANE_AXES, PROTOCOLS, KneeAnatomy

__all__ = ["ANATOMY_VERSION", "GRADES", "OAI_FOLDER", "PLANE_AXES", "PROTOCOLS", "Acquisition", "KneeAnatomy",
           "KneeCase", "acl_shape_subjects", "acquire", "anatomy", "build_anatomy", "draw_case", "lateral_side",
           "notch_landmarks", "synthetic_acl_knee", "to_binary", "write_acl_study"]
