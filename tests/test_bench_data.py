"""bench/data_scale.py at tiny sizes: the measurements run and the tables
print (the COCO-sized numbers themselves are in bench/README.md)."""

from bench import data_scale


def test_coco_scale_rows_and_table(tmp_path):
  path = data_scale.ensure_coco_like(str(tmp_path), 40, 300)
  # (read_coco and coco_gt run the same way; build_train_loader reads too.)
  rows = data_scale.coco_scale_rows(path, 1,
                                    ['pycocotools', 'build_train_loader'])
  assert rows[0]['n'] == 300 and 0 < rows[1]['n'] <= 40
  assert all(r['peak_mib'] >= 0 and r['cpu_s'] > 0 for r in rows)
  table = data_scale.format_scale_table(rows).splitlines()
  assert len(table) == 4 and table[2].startswith('| pycocotools |')
  assert '1.00 / 1.00' in table[2]


def test_coco_eval_rows_and_table(tmp_path):
  rows, diff = data_scale.coco_eval_rows(30, 10, str(tmp_path))
  assert [r['evaluator'] for r in rows] == ['pycocotools', 'faster_coco_eval']
  assert diff <= 1e-15 and 0 < rows[0]['AP'] < 1
  table = data_scale.format_eval_table(rows).splitlines()
  assert len(table) == 4 and '| 1.000 |' in table[2]
