"""Data for xsim: text preparation shared by all models, text sources, an offline corpus and probe tasks."""
from xsim.data.corpus import CORPORA, corpus_documents, load_corpus, split_passages
from xsim.data.sources import (DataUnavailableError, load_hf_dataset, load_hf_texts, load_jsonl_texts,
                               load_pile_10k, load_text_file, save_jsonl_texts)
from xsim.data.statements import (capitals_task, cities_task, comparison_task, load_countries,
                                  number_to_words)
from xsim.data.hf_tasks import ag_news_sports_task, sst2_task, toxigen_task
from xsim.data.task import Task, sample_examples
from xsim.data.tasks import OFFLINE_TASKS, TASKS, load_task
from xsim.data.text import cut_text, next_word_split, normalize_whitespace, text_hash, word_spans
