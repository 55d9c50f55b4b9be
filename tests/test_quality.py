from conftest import SMS_ZIP

from engine.data.prepared import balance, prepare, read_source_file, split
from engine.data.quality import deduplicate, duplicate_report


def test_the_collection_repeats_hundreds_of_texts():
    messages = read_source_file(SMS_ZIP)
    report = duplicate_report(messages, split(balance(messages)))
    assert (report.messages, report.distinct_texts, report.extra_copies) == (5574, 5171, 403)
    assert report.most_repeated[0] == ("Sorry, I'll call later", 30)
    assert report.across_splits["train & test"] > 0  # the book's splits share texts


def test_deduplicated_splits_share_no_text(tmp_path):
    data = prepare(str(SMS_ZIP), tmp_path, deduplicate=True)
    assert data.summary.deduplicated and data.summary.messages == 5574
    texts = [set(part.Text) for _, part in data.splits.items()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(len(t) for t in texts) == sum(len(part) for _, part in data.splits.items())
    assert len(data.splits.train) == 914  # 653 distinct spam texts, balanced and split 70/10/20


def test_deduplicate_keeps_the_first_copy_in_order():
    messages = read_source_file(SMS_ZIP)
    kept = deduplicate(messages)
    assert len(kept) == 5171 and kept.Text.is_unique
    assert kept.Text.tolist() == list(dict.fromkeys(messages.Text))
