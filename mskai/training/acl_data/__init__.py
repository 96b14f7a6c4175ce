"""ACL training data: case lists (CSV, MRNet, KneeMRI), safe readers of their files, subject-level splits.

Classes (``classes=4``): 0 healthy, 1 minor strain, 2 partial rupture, 3 complete rupture;
(``classes=2``): 0 intact, 1 torn. See ``mskai.acl.CLASS_NAMES`` and the KneeMRI mapping in ``kneemri``.

Every reader checks its whole list first and fails with one MskaiError naming the first few problems (with line
numbers), so a run never starts on a half-read data set. Subjects are always pseudonyms (a salted hash of what
identifies the patient), never names or record numbers; they are for grouping cases, not a de-identification.

Modules: ``common`` (limits, pseudonyms, bounded file and CSV reading), ``arrays`` (bare .npy arrays and their
assumed geometry), ``safe_pickle`` (the restricted unpickler of .pck/.pkl volumes), ``case`` (``AclCase``: one
labelled series and how it is read), one module per list format (``csv_list``, ``mrnet``, ``kneemri``) and
``splits`` (stratified subject split, class weights).
"""

from mskai.training.acl_data.arrays import array_to_volume, check_array, load_npy_array
from mskai.training.acl_data.case import AclCase
from mskai.training.acl_data.csv_list import read_csv
from mskai.training.acl_data.kneemri import KNEEMRI_LABELS, read_kneemri
from mskai.training.acl_data.mrnet import read_mrnet
from mskai.training.acl_data.safe_pickle import load_pickle_array
from mskai.training.acl_data.splits import class_weights, stratified_subject_split

__all__ = ["KNEEMRI_LABELS", "AclCase", "array_to_volume", "check_array", "class_weights", "load_npy_array",
           "load_pickle_array", "read_csv", "read_kneemri", "read_mrnet", "stratified_subject_split"]
