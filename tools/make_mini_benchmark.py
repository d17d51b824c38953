"""Generates the bundled mini benchmark (``promptjax/tasks/data``): a synthetic world in the real formats.

    .venv/bin/python tools/make_mini_benchmark.py --out promptjax/tasks/data

One fixed seed; pure Python + `numpy.random.RandomState`; byte-identical output on every run (about 15 s;
TFRecords are rewritten with deterministic protobuf serialization, see `_canonicalize_tfrecords`).
What it writes (see ``data/README.md`` for the design):

- ``p3/<subset>/``: P3-format subsets (`promptjax.tasks.p3.write_p3_split`): training templates of six
  training task families (``train`` / ``validation``), and ``*_score_eval`` held-out templates of four
  held-out families of other task types (``train`` for few-shot, ``validation`` for evaluation);
- ``crossfit/<task>/<task>_<k>_<seed>_<split>.tsv``: CrossFit-format few-shot tasks (seeds 100, 13, 21,
  42, 87; classification k=16 per label, text-to-text k=32 in all; one ~100-example test set);
- ``text/mini_owt-0000i-of-00004.jsonl``: OpenWebText-style documents (``{"text": ...}`` per line) about
  the same world;
- ``vocab/mini_spm.model``: a SentencePiece model (BPE: the unigram trainer degenerates on so small a
  corpus, see the README) trained on all of the above (T5 ids: pad 0, eos 1, unk 2, no bos), which
  tokenizes every P3 record;
- ``manifest.json``: everything above, machine-readable (families, templates, choices, partitions).

Difficulty is set by `DIFFICULTY` and the sizes by `SIZES` (both recorded in the manifest).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import zlib
from typing import Dict, Optional, Sequence

import numpy as np

SEED = 2022
VOCAB_SIZE = 1500
EOS_ID = 1
CROSSFIT_SEEDS = (100, 13, 21, 42, 87)
CROSSFIT_SPLITS = ('train', 'dev', 'test')
TEXT_SHARDS = 4

SIZES = {
    'p3_train': 1000,           # examples per training-family dataset (every template renders each one;
                                # capped by P3_TRAIN_LIMITS)
    'p3_validation': 64,
    'heldout_train': 64,        # held-out examples for few-shot training (16-shot draws from these)
    'heldout_validation': 100,  # held-out examples for evaluation
    'crossfit_pool_per_label': 40,  # classification: the train+dev pool each seed samples k per label from
    'crossfit_t2t_pool': 96,        # text-to-text: the train+dev pool each seed samples 2k from
    'crossfit_test': 100,
}

# Training-family datasets whose world has fewer distinct examples than SIZES['p3_train'] (with validation's
# drawn from the rest): paraphrase pairs and closed-book facts.
P3_TRAIN_LIMITS = {'mini_paraphrase': 700, 'mini_closed_book_qa': 300}

# Knobs for how hard the tasks are (see data/README.md, "Tuning difficulty").
DIFFICULTY = {
    'sentiment_distractor_rate': 0.3,   # add one cue of the opposite polarity (label = majority)
    'sentiment_negation_rate': 0.15,    # a cue written as 'not <opposite word>'
    'paraphrase_hard_negative_rate': 0.7,  # non-paraphrases that differ only in one value (PAWS-like)
    'reading_num_options': 3,
    'reading_reverse_rate': 0.3,        # questions answered by an entity ("Who works as a baker?")
    'nli_distractor_fact_rate': 0.3,    # premise also states a fact about another entity
    'nli_review_rate': 0.75,            # P3 NLI: the premise is a cafe visit, the hypothesis how it went
    'completion_distractor_rate': 0.3,  # visit stories with one cue of the opposite polarity
    'coref_mixed_gender_rate': 0.5,     # the pronoun's gender picks the referent
    'coref_roles_stated_rate': 0.5,     # both jobs are stated in the text (else world knowledge)
    'topic_sense_sentence_rate': 0.5,   # topic texts that include a polysemous-word sentence
}

# ---------------------------------------------------------------------------------------------------
# The world

ANIMALS = ('fox', 'owl', 'bear', 'frog', 'goat', 'hawk', 'wolf', 'deer', 'duck', 'crab', 'hare', 'toad',
           'swan', 'crow', 'otter', 'lynx', 'moth', 'beaver', 'camel', 'snail')
COLOURS = ('red', 'brown', 'grey', 'white', 'black', 'green', 'yellow')
SIZE_WORDS = ('tiny', 'small', 'big', 'huge')
HABITATS = ('forest', 'river', 'desert', 'mountains', 'lake', 'swamp', 'meadow', 'cave')
DIETS = ('berries', 'fish', 'insects', 'grass', 'seeds', 'mice', 'leaves', 'worms')
SOUNDS = ('howls', 'hoots', 'growls', 'croaks', 'squeaks', 'hisses', 'whistles', 'chirps')
FEMALE = ('Anna', 'Clara', 'Elena', 'Grace', 'Ida', 'Julia', 'Lena', 'Mia', 'Nora', 'Rosa', 'Sara', 'Vera')
MALE = ('Ben', 'David', 'Felix', 'Hugo', 'Ivan', 'Leo', 'Max', 'Omar', 'Paul', 'Sam', 'Tom', 'Victor')
CITIES = ('Norvik', 'Belmora', 'Castell', 'Dunmere', 'Elmford', 'Farrow', 'Glenby', 'Harwick')
NEAR = ('the sea', 'a river', 'the mountains', 'a lake', 'a forest', 'the desert')
FOODS = ('bread', 'cheese', 'soup', 'pie', 'cake', 'rice', 'noodles', 'plums', 'honey', 'apples', 'olives',
         'beans')
PLURAL_FOODS = ('noodles', 'plums', 'apples', 'olives', 'beans')


def agree(subject: str) -> Dict[str, str]:
  """Verb forms that agree with a food as the subject (``{tastes}``, ``{has}``, ``{is}``, ``{it}``...)."""
  pl = subject in PLURAL_FOODS
  return {'tastes': 'taste' if pl else 'tastes', 'has': 'have' if pl else 'has', 'is': 'are' if pl else 'is',
          'it': 'they' if pl else 'it', 'does': 'do' if pl else 'does', 'Does': 'Do' if pl else 'Does',
          'was': 'were' if pl else 'was'}


def decap(sentence: str) -> str:
  """Lower-cases the first letter unless the sentence starts with a name."""
  first = sentence.split(' ', 1)[0]
  return sentence if first in FEMALE + MALE + CITIES else sentence[:1].lower() + sentence[1:]


def an(noun: str) -> str:
  return ('an ' if noun[0] in 'aeiou' else 'a ') + noun
TASTES = ('sweet', 'sour', 'salty', 'bitter', 'spicy')
NUMBERS = ('two', 'three', 'four', 'five', 'six', 'ten')

# job -> (workplace, activities in the 3rd person)
JOBS = {
    'baker': ('bakery', ('bakes fresh bread', 'makes sweet cakes', 'lights the big oven')),
    'farmer': ('farm', ('feeds the goats', 'plants seeds in the field', 'milks the cows')),
    'doctor': ('hospital', ('helps sick people', 'checks on a patient', 'gives medicine to a child')),
    'teacher': ('school', ('teaches the children to read', 'writes on the board', 'marks the homework')),
    'painter': ('studio', ('paints a picture', 'mixes the paint', 'cleans the brushes')),
    'sailor': ('harbour', ('sails the boat', 'ties the ropes on the ship', 'raises the sails')),
    'miner': ('mine', ('digs for coal', 'carries a lamp into the tunnel', 'breaks rocks with a pick')),
    'singer': ('theatre', ('sings a song on stage', 'practises a new tune', 'performs for a crowd')),
    'fisher': ('pier', ('catches fish with a net', 'casts a line into the water', 'sells fish at the market')),
    'builder': ('building site', ('builds a new house', 'lays bricks for a wall', 'fixes a roof')),
}
# climate -> what one sees when it has that weather
CLIMATES = {
    'cold': ('everyone wears a thick coat', 'the pond is frozen'),
    'warm': ('children play in the sun', 'people eat ice cream'),
    'rainy': ('people carry umbrellas', 'the streets are wet'),
    'windy': ('kites fly high', 'leaves blow down the street'),
    'snowy': ('children build a snowman', 'the roofs are white'),
    'sunny': ('people wear sunglasses', 'the beach is full'),
    'foggy': ('ships move slowly', 'nobody can see far'),
    'dry': ('the grass turns brown', 'farmers wait for rain'),
}

# Relations: kind of entity, values, statement forms (paraphrases), wh-question, yes/no question, reverse
# question (answer = the entity; None where the value does not single one out) and question type.
RELATIONS = {
    'colour': dict(kind='animal', values=COLOURS, says=('{e} is {v}.', '{e} is {v} in colour.',
                                                        'the colour of {e} is {v}.'),
                   wh='What colour is {e}?', yn='Is {e} {v}?', rev='Which animal is {v}?'),
    'size': dict(kind='animal', values=SIZE_WORDS, says=('{e} is a {v} animal.', 'in size, {e} is {v}.',
                                                         '{e} is {v} for an animal.'),
                 wh='How big is {e}?', yn='Is {e} a {v} animal?', rev=None),
    'habitat': dict(kind='animal', values=HABITATS, says=('{e} lives in the {v}.',
                                                          '{e} makes its home in the {v}.',
                                                          'you can find {e} in the {v}.'),
                    wh='Where does {e} live?', yn='Does {e} live in the {v}?',
                    rev='Which animal lives in the {v}?'),
    'diet': dict(kind='animal', values=DIETS, says=('{e} eats {v}.', '{e} feeds on {v}.',
                                                    'the main food of {e} is {v}.'),
                 wh='What does {e} eat?', yn='Does {e} eat {v}?', rev='Which animal eats {v}?'),
    'sound': dict(kind='animal', values=SOUNDS, says=('{e} {v} at night.', 'at night, {e} {v}.',
                                                      'you can hear {e} when it {v}.'),
                  wh='What does {e} do at night?', yn='Is it true that {e} {v}?', rev=None),
    'job': dict(kind='person', values=tuple(JOBS), says=('{e} is a {v}.', '{e} works as a {v}.',
                                                         '{e} has a job as a {v}.'),
                wh='What is the job of {e}?', yn='Is {e} a {v}?', rev='Who works as a {v}?'),
    'home': dict(kind='person', values=CITIES, says=('{e} lives in {v}.', '{e} has a home in {v}.',
                                                     'the home of {e} is in {v}.'),
                 wh='Where does {e} live?', yn='Does {e} live in {v}?', rev='Who lives in {v}?'),
    'pet': dict(kind='person', values=ANIMALS, says=('{e} has a pet {v}.', '{e} keeps {an_v} as a pet.',
                                                     'the pet of {e} is {an_v}.'),
                wh='What pet does {e} have?', yn='Does {e} have a pet {v}?', rev='Who has a pet {v}?'),
    'food': dict(kind='person', values=FOODS, says=('{e} likes {v}.', '{e} loves to eat {v}.',
                                                    'the favourite food of {e} is {v}.'),
                 wh='What food does {e} like?', yn='Does {e} like {v}?', rev='Who likes {v}?'),
    'climate': dict(kind='city', values=tuple(CLIMATES), says=('the weather in {e} is {v}.',
                                                               '{e} has {v} weather.',
                                                               'in {e}, the weather is {v}.'),
                    wh='What is the weather like in {e}?', yn='Is the weather in {e} {v}?',
                    rev='Which town has {v} weather?'),
    'near': dict(kind='city', values=NEAR, says=('{e} is near {v}.', '{e} lies close to {v}.',
                                                 '{e} is a town by {v}.'),
                 wh='What is {e} near?', yn='Is {e} near {v}?', rev='Which town is near {v}?'),
    'dish': dict(kind='city', values=FOODS, says=('{e} is famous for its {v}.', '{e} is known for its {v}.',
                                                  'people in {e} are proud of their {v}.'),
                 wh='What is {e} famous for?', yn='Is {e} famous for its {v}?',
                 rev='Which town is famous for its {v}?'),
    'taste': dict(kind='food', values=TASTES, says=('{e} {tastes} {v}.', 'the taste of {e} is {v}.',
                                                    '{e} {has} a {v} taste.'),
                  wh='How {does} {e} taste?', yn='{Does} {e} taste {v}?', rev=None),
}
KIND_RELATIONS = {k: tuple(r for r, spec in RELATIONS.items() if spec['kind'] == k)
                  for k in ('animal', 'person', 'city', 'food')}
# Question type (CrossFit mini_question_type): by relation for wh-questions; reverse questions ask for the
# entity's kind.
WH_QTYPE = {'colour': 'description', 'size': 'description', 'habitat': 'place', 'diet': 'food',
            'sound': 'description', 'job': 'description', 'home': 'place', 'pet': 'animal', 'food': 'food',
            'climate': 'description', 'near': 'place', 'dish': 'food', 'taste': 'description'}
REV_QTYPE = {'animal': 'animal', 'person': 'person', 'city': 'place'}
QTYPES = ('animal', 'description', 'food', 'person', 'place')

# Sentiment cue words.
POS_FOOD = ('delicious', 'tasty', 'fresh', 'wonderful', 'perfect', 'lovely')
NEG_FOOD = ('stale', 'bland', 'awful', 'burnt', 'soggy', 'terrible')
POS_STAFF = ('friendly', 'kind', 'helpful', 'polite')
NEG_STAFF = ('rude', 'slow', 'careless', 'grumpy')
POS_ROOM = ('cozy', 'clean', 'bright', 'calm')
NEG_ROOM = ('dirty', 'noisy', 'crowded', 'gloomy')
POS_VERDICT = ('I will come back soon.', 'I would recommend it to everyone.', 'It made me very happy.',
               'It was worth every coin.')
NEG_VERDICT = ('I will never come back.', 'I would warn everyone to stay away.', 'It made me very sad.',
               'It was a waste of money.')

TOPICS = ('animals', 'food', 'sports', 'money', 'weather', 'health')

# What each sense of the polysemous words below means (dictionary-style corpus documents).
GLOSSES = {
    'bat': ('a small animal that flies at night', 'a wooden stick used to hit a ball'),
    'bank': ('the land along the side of a river', 'a place that keeps money'),
    'seal': ('an animal that swims in the sea', 'a mark that closes a letter or a jar'),
    'crane': ('a tall bird with long legs', 'a machine that lifts heavy things'),
    'mole': ('a small animal that digs under the ground', 'a small dark spot on the skin'),
    'date': ('a sweet fruit from a palm tree', 'the day of the month'),
    'jam': ('a sweet food made from fruit', 'a line of cars that cannot move'),
    'match': ('a game between two teams', 'a small stick that makes fire'),
    'pitch': ('the field where a game is played', 'how high or low a sound is'),
    'bill': ('the beak of a bird', 'the paper that says how much to pay'),
    'cold': ('weather that is not warm', 'an illness that makes you cough'),
    'fan': ('a machine that moves air', 'a person who loves a team or a singer'),
}

# Polysemous words: two senses, each with sentences ({n} a name, {c} a town) and the topic it belongs to.
SENSES = {
    'bat': (('animals', ('The bat flew out of the cave at night.', 'A small bat hung upside down in the old barn.',
                         '{n} saw a bat catching moths near the lake.',
                         'The bat uses its ears to find insects in the dark.')),
            ('sports', ('{n} swung the bat and hit the ball far.', 'The coach gave {n} a new wooden bat.',
                        '{n} held the bat tightly and waited for the throw.',
                        'The team from {c} bought a bat for every player.'))),
    'bank': (('nature', ('{n} sat on the bank of the river to fish.', 'Tall grass grew along the bank of the stream.',
                         'The boat drifted toward the muddy bank.', 'Ducks rested on the river bank near {c}.')),
             ('money', ('{n} put the coins in the bank.', 'The bank in {c} lent money to the farmers.',
                        '{n} opened an account at the bank.', 'The bank closes at noon on market day.'))),
    'seal': (('animals', ('A grey seal swam under the ice.', 'The seal rested on the rocks by the sea.',
                          '{n} watched a seal catch a fish.', 'The young seal barked at the boats near {c}.')),
             ('letters', ('{n} broke the seal on the letter.', 'The king pressed his seal into the wax.',
                          'The seal on the jar kept the honey fresh.',
                          '{n} checked that the seal on the box was not broken.'))),
    'crane': (('animals', ('A crane stood on one leg in the lake.', 'The crane caught a frog with its long beak.',
                           '{n} saw a white crane fly over {c}.', 'The crane built a nest in the tall reeds.')),
              ('building', ('The crane lifted the steel beams onto the roof.',
                            'The builders in {c} used a crane to move the bricks.',
                            '{n} drove the crane at the building site.',
                            'A tall crane stood next to the new tower.'))),
    'mole': (('animals', ('The mole dug a tunnel under the garden.', 'A mole cannot see well in the light.',
                          '{n} found a mole in the field.', 'The mole eats worms under the ground.')),
             ('health', ('The doctor looked at the mole on the arm of {n}.', '{n} has a small mole on the cheek.',
                         'The mole on her neck was dark and round.',
                         'A doctor in {c} checked the mole on his back.'))),
    'date': (('food', ('{n} ate a sweet date after lunch.', 'The date from the palm tree was sticky.',
                       'The baker put a date in every cake.', '{n} bought a date at the market in {c}.')),
             ('time', ('{n} wrote the date at the top of the page.', 'The date of the match is next Monday.',
                       'We chose a date for the trip to {c}.', 'The date on the letter was wrong.'))),
    'jam': (('food', ('{n} spread plum jam on warm bread.', 'The jam was sweet and thick.',
                      'A jar of jam stood on the table.', 'The cafe in {c} makes jam from fresh berries.')),
            ('traffic', ('{n} was stuck in a traffic jam for an hour.', 'A long jam of cars blocked the road to {c}.',
                         'The jam on the bridge made everyone late.',
                         'The bus was slow because of the jam in town.'))),
    'match': (('sports', ('The match between the two teams ended in a draw.', '{n} scored twice in the match.',
                          'Fans from {c} travelled to watch the match.', 'The match started at noon.')),
              ('fire', ('{n} lit a match to start the fire.', 'The match burned down to her fingers.',
                        'A single match was enough to light the candle.', '{n} struck a match in the dark room.'))),
    'pitch': (('sports', ('The players walked onto the pitch.', 'Rain made the pitch wet and muddy.',
                          'The pitch in {c} has fresh green grass.', '{n} ran across the pitch with the ball.')),
              ('music', ('The singer could not reach the high pitch.', '{n} sang the song at a low pitch.',
                         'The pitch of the whistle hurt his ears.',
                         'The pitch of her voice rose when she was excited.'))),
    'bill': (('animals', ('The duck used its bill to catch food.', 'The bird had a long yellow bill.',
                          '{n} saw a swan clean its feathers with its bill.',
                          'The bill of the crow is black and sharp.')),
             ('money', ('{n} paid the bill after dinner.', 'The bill for the repairs was very high.',
                        'The waiter brought the bill to our table.', '{n} paid the bill at the cafe in {c}.'))),
    'cold': (('weather', ('The cold wind blew across {c}.', 'It was too cold to swim in the lake.',
                          'The cold winter froze the river.', '{n} wore a coat because of the cold.')),
             ('health', ('{n} caught a cold and stayed in bed.', 'The doctor said the cold would pass in a week.',
                         'Her cold made her cough all night.', '{n} drank hot soup to get over the cold.'))),
    'fan': (('weather', ('{n} turned on the fan because the room was hot.', 'The fan spun slowly above the bed.',
                         'A small fan cooled the kitchen in {c}.', 'The fan made a quiet humming noise.')),
            ('sports', ('{n} is a big fan of the team from {c}.', 'Every fan cheered when the goal was scored.',
                        'The singer signed a photo for a young fan.', 'A fan waved a flag at the match.'))),
}

# General topic sentences ({n} name, {c} town, {a} animal with its world facts, {f} food with its taste).
TOPIC_SENTENCES = {
    'animals': ('{A} in the {habitat} {sound} at night.', '{An_colour} {a} was seen near {c}.',
                '{n} fed the {a} some {diet}.', 'Scientists counted {num} {a_pl} in the {habitat}.',
                'The zoo in {c} has a new {a}.'),
    'food': ('The cafe in {c} serves {f} with {f2}.', '{n} cooked {f} for dinner.', '{F} {tastes} {taste}.',
             'The chef added salt to the {f}.', 'The market in {c} sells fresh {f}.'),
    'sports': ('The team from {c} won the game by {num} goals.', '{n} ran the race in record time.',
               'The players trained hard for the final.', '{n} kicked the ball into the net.',
               'The coach from {c} praised the team.'),
    'money': ('Prices in {c} rose again this year.', '{n} saved {num} coins in a jar.',
              'The shop in {c} lowered its prices.', '{n} earned more money this month.',
              'Taxes in {c} will go up next year.'),
    'weather': ('The weather in {c} will be {climate} tomorrow.', 'Heavy rain fell on {c} for {num} days.',
                'Maybe it will snow in {c} tonight.', 'A strong wind blew across {c}.',
                'The sky over {c} was grey all morning.'),
    'health': ('The doctor in {c} gave {n} some medicine.', '{n} went to the hospital with a sore leg.',
               'Doctors say that sleep is good for the heart.', '{n} has a fever and a cough.',
               'The nurse checked the arm of {n}.'),
}


def rng_for(name: str) -> np.random.RandomState:
  """An independent, stable random stream per component (changing one does not shift the others)."""
  return np.random.RandomState(zlib.crc32(f'{SEED}:{name}'.encode('utf-8')))


def pick(rng, seq):
  return seq[int(rng.randint(len(seq)))]


def shuffled(rng, seq):
  seq = list(seq)
  return [seq[int(i)] for i in rng.permutation(len(seq))]


def cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def plural(noun: str) -> str:
  if noun in ('deer', 'fish'):
    return noun
  if noun.endswith(('x', 's', 'ch', 'sh')):
    return noun + 'es'
  return noun + 's'


def balanced_assign(rng, keys, values):
  vals = (list(values) * (len(keys) // len(values) + 1))[:len(keys)]
  vals = shuffled(rng, vals)
  return dict(zip(keys, vals))


class World:
  """Entities and their attributes (deterministic, balanced over values)."""

  def __init__(self):
    rng = rng_for('world')
    self.people = sorted(FEMALE + MALE)
    self.gender = {p: ('f' if p in FEMALE else 'm') for p in self.people}
    self.facts: Dict[str, Dict[str, str]] = {}
    kinds = {'animal': ANIMALS, 'person': tuple(self.people), 'city': CITIES, 'food': FOODS}
    self.kind = {}
    for kind, ents in kinds.items():
      for e in ents:
        self.facts[e] = {}
        self.kind[e] = kind
      for rel in KIND_RELATIONS[kind]:
        for e, v in balanced_assign(rng, ents, RELATIONS[rel]['values']).items():
          self.facts[e][rel] = v
    self.entities = {k: tuple(v) for k, v in kinds.items()}

  def phrase(self, e: str) -> str:
    """How an entity is named inside a sentence."""
    return 'the ' + e if self.kind[e] == 'animal' else e

  def answer(self, e: str) -> str:
    """How an entity is given as an answer (a span of the sentences that name it)."""
    return e

  def say(self, e: str, rel: str, v: Optional[str] = None, form: int = 0) -> str:
    v = self.facts[e][rel] if v is None else v
    return cap(RELATIONS[rel]['says'][form].format(e=self.phrase(e), v=v, an_v=an(v), **agree(e)))

  def wh(self, e, rel):
    return RELATIONS[rel]['wh'].format(e=self.phrase(e), **agree(e))

  def yn(self, e, rel, v):
    return RELATIONS[rel]['yn'].format(e=self.phrase(e), v=v, **agree(e))

  def rev(self, rel, v):
    return RELATIONS[rel]['rev'].format(v=v)

  def pron(self, p, case='subj'):
    return {'subj': {'f': 'she', 'm': 'he'}, 'obj': {'f': 'her', 'm': 'him'},
            'poss': {'f': 'her', 'm': 'his'}}[case][self.gender[p]]

  def all_facts(self, kinds=('animal', 'person', 'city', 'food')):
    return [(e, r) for k in kinds for e in self.entities[k] for r in KIND_RELATIONS[k]]


def other_value(rng, rel, v, exclude=()):
  vals = [x for x in RELATIONS[rel]['values'] if x != v and x not in exclude]
  return pick(rng, vals)


# ---------------------------------------------------------------------------------------------------
# Example generators. Each returns a dict (the underlying example) or None to retry; `label` is the
# requested class where the dataset is label-balanced.


def gen_sentiment(world, rng, label):
  city = pick(rng, CITIES)
  food = pick(rng, FOODS)
  name = pick(rng, world.people)
  opener = pick(rng, (f'I had the {food} at a small cafe in {city}.', f'We stopped in {city} and ordered {food}.',
                      f'My friend {name} took me to a cafe in {city} for {food}.',
                      f'Last week I tried the {food} at the market cafe in {city}.'))

  def cue(polarity, kind):
    neg = rng.rand() < DIFFICULTY['sentiment_negation_rate'] and kind != 'verdict'
    words = {('food', 1): POS_FOOD, ('food', 0): NEG_FOOD, ('staff', 1): POS_STAFF, ('staff', 0): NEG_STAFF,
             ('room', 1): POS_ROOM, ('room', 0): NEG_ROOM}
    if kind == 'verdict':
      return pick(rng, POS_VERDICT if polarity else NEG_VERDICT)
    w = pick(rng, words[(kind, 1 - polarity)] if neg else words[(kind, polarity)])
    w = ('not ' + w) if neg else w
    return {'food': f'The {food} {agree(food)["was"]} {w}.', 'staff': f'The staff were {w}.',
            'room': f'The room was {w}.'}[kind]

  kinds = shuffled(rng, ('food', 'staff', 'room', 'verdict'))
  cues = [(label, kinds[0]), (label, kinds[1])]
  if rng.rand() < DIFFICULTY['sentiment_distractor_rate']:
    cues.insert(int(rng.randint(3)), (1 - label, kinds[2]))
  sents = [opener] + [cue(p, k) for p, k in cues]
  if any(k == 'verdict' for _, k in cues):  # the verdict goes last
    sents = [s for s in sents if s not in POS_VERDICT + NEG_VERDICT] + [
        s for s in sents if s in POS_VERDICT + NEG_VERDICT]
  return {'review': ' '.join(sents), 'label': label, 'city': city, 'food': food}


def fill_slots(world, rng, template):
  a = pick(rng, ANIMALS)
  f, f2 = shuffled(rng, FOODS)[:2]
  c = pick(rng, CITIES)
  af = world.facts[a]
  return cap(template.format(
      n=pick(rng, world.people), c=c, a=a, A='The ' + a, An_colour=cap(an(af['colour'])), a_pl=plural(a),
      habitat=af['habitat'], sound=af['sound'], colour=af['colour'], diet=af['diet'], num=pick(rng, NUMBERS),
      f=f, F=cap(f), f2=f2,
      taste=world.facts[f]['taste'], climate=world.facts[c]['climate'], **agree(f)))


def sense_sentences(topic):
  return [(w, i, s) for w, senses in sorted(SENSES.items()) for i, (t, sents) in enumerate(senses)
          if t == topic for s in sents]


def gen_topic(world, rng, label):
  topic = TOPICS[label]
  sents = [fill_slots(world, rng, pick(rng, TOPIC_SENTENCES[topic]))]
  sense = sense_sentences(topic)
  if sense and rng.rand() < DIFFICULTY['topic_sense_sentence_rate']:
    sents.append(fill_slots(world, rng, pick(rng, sense)[2]))
  else:
    second = fill_slots(world, rng, pick(rng, TOPIC_SENTENCES[topic]))
    if second == sents[0]:
      return None
    sents.append(second)
  return {'text': ' '.join(shuffled(rng, sents)), 'label': label}


def gen_reading(world, rng, label=None):
  kind = pick(rng, ('animal', 'animal', 'person', 'person', 'city'))
  e1, e2 = shuffled(rng, world.entities[kind])[:2]
  rels = shuffled(rng, KIND_RELATIONS[kind])
  facts = [(e1, rels[0]), (e2, rels[0]), (e1, rels[1])]
  facts = shuffled(rng, facts)
  context = ' '.join(world.say(e, r, form=int(rng.randint(3))) for e, r in facts)
  n = DIFFICULTY['reading_num_options']
  r = rels[0]
  if (RELATIONS[r]['rev'] and world.facts[e1][r] != world.facts[e2][r]
      and rng.rand() < DIFFICULTY['reading_reverse_rate']):  # "Who works as a baker?" -> a name
    e = pick(rng, (e1, e2))
    others = [x for x in world.entities[kind] if x not in (e1, e2) and world.facts[x][r] != world.facts[e][r]]
    options = shuffled(rng, [world.answer(x) for x in [e1, e2] + shuffled(rng, others)[:n - 2]])
    return {'context': context, 'question': world.rev(r, world.facts[e][r]), 'answer': world.answer(e),
            'options': options}
  e, r = facts[int(rng.randint(len(facts)))]
  v = world.facts[e][r]
  vals = [x for x in RELATIONS[r]['values'] if x != v and all(x != world.facts[o][r] for o, rr in facts if rr == r)]
  if len(vals) < n - 1:
    return None
  options = shuffled(rng, [v] + shuffled(rng, vals)[:n - 1])
  return {'context': context, 'question': world.wh(e, r), 'answer': v, 'options': options}


def gen_extractive(world, rng, label=None):
  kind = pick(rng, ('animal', 'person', 'person', 'city'))
  ents = shuffled(rng, world.entities[kind])[:3]
  rel = pick(rng, KIND_RELATIONS[kind])
  extra = pick(rng, [r for r in KIND_RELATIONS[kind] if r != rel])
  facts = [(e, rel) for e in ents] + [(ents[0], extra)]
  facts = shuffled(rng, facts)
  context = ' '.join(world.say(e, r, form=int(rng.randint(3))) for e, r in facts)
  e, r = facts[int(rng.randint(len(facts)))]
  v = world.facts[e][r]
  same = [o for o, rr in facts if rr == r and world.facts[o][r] == v]
  if RELATIONS[r]['rev'] and len(same) == 1 and rng.rand() < 0.5:
    question, answer = world.rev(r, v), world.answer(e)
  else:
    question, answer = world.wh(e, r), v
  if answer not in context:
    return None
  return {'context': context, 'question': question, 'answer': answer}


def gen_paraphrase(world, rng, label):
  e, r = pick(rng, world.all_facts(('animal', 'person', 'city', 'food')))
  f1, f2 = shuffled(rng, range(3))[:2]
  s1 = world.say(e, r, form=f1)
  if label == 1:
    s2 = world.say(e, r, form=f2)
  elif rng.rand() < DIFFICULTY['paraphrase_hard_negative_rate']:
    s2 = world.say(e, r, v=other_value(rng, r, world.facts[e][r]), form=f2 if rng.rand() < 0.5 else f1)
  else:
    o = pick(rng, [x for x in world.entities[world.kind[e]] if x != e])
    s2 = world.say(o, r, v=world.facts[e][r], form=f2 if rng.rand() < 0.5 else f1)
  if rng.rand() < 0.5:
    s1, s2 = s2, s1
  return {'sentence1': s1, 'sentence2': s2, 'label': label}


def gen_closed_book(world, rng, label, facts):
  e, r = pick(rng, facts)
  v = world.facts[e][r]
  ds = shuffled(rng, [x for x in RELATIONS[r]['values'] if x != v])[:2]
  claim = v if label == 1 else ds[0]
  return {'entity': e, 'relation': r, 'claim_value': claim, 'question': world.wh(e, r), 'answer': v,
          'options': shuffled(rng, [v] + ds), 'claim': world.say(e, r, v=claim, form=int(rng.randint(3))),
          'yn_question': cap(world.yn(e, r, claim)), 'label': label}


def gen_nli(world, rng, label):
  """label: 0 entailment, 1 neutral, 2 contradiction."""
  kind = pick(rng, ('animal', 'person', 'person', 'city'))
  e = pick(rng, world.entities[kind])
  rels = shuffled(rng, KIND_RELATIONS[kind])
  forms = [int(rng.randint(3)) for _ in range(2)]
  premise = [world.say(e, rels[0], form=forms[0]), world.say(e, rels[1], form=forms[1])]
  if rng.rand() < DIFFICULTY['nli_distractor_fact_rate']:
    o = pick(rng, [x for x in world.entities[kind] if x != e])
    premise.insert(int(rng.randint(3)), world.say(o, pick(rng, rels), form=int(rng.randint(3))))
  j = int(rng.randint(2))
  if label == 0:
    hyp = world.say(e, rels[j], form=pick(rng, [f for f in range(3) if f != forms[j]]))
  elif label == 2:
    hyp = world.say(e, rels[j], v=other_value(rng, rels[j], world.facts[e][rels[j]]), form=int(rng.randint(3)))
  else:
    r = rels[2]
    v = world.facts[e][r] if rng.rand() < 0.5 else other_value(rng, r, world.facts[e][r])
    hyp = world.say(e, r, v=v, form=int(rng.randint(3)))
  return {'premise': ' '.join(premise), 'hypothesis': hyp, 'label': label}


def visit_cues(rng, food, polarity, distractor_rate):
  """Two sentiment cues of `polarity` about a cafe visit (the sentiment family's words), sometimes with
  one cue of the opposite polarity in between (the majority decides, as in the reviews)."""
  words = {1: (POS_FOOD, POS_STAFF + POS_ROOM), 0: (NEG_FOOD, NEG_STAFF + NEG_ROOM)}

  def cue(pol, slot):
    w = pick(rng, words[pol][slot])
    if slot == 0:
      return f'The {food} {agree(food)["was"]} {w}.'
    return f'The staff were {w}.' if w in POS_STAFF + NEG_STAFF else f'The room was {w}.'

  cues = [cue(polarity, 0), cue(polarity, 1)]
  if rng.rand() < distractor_rate:
    cues.insert(1, cue(1 - polarity, 1))
  return ' '.join(cues)


def gen_nli_review(world, rng, label):
  """P3's NLI (label: 0 entailment, 1 neutral, 2 contradiction). Mostly a cafe visit told with the
  sentiment family's cue words, and a hypothesis on how the visitor liked it (entailed or contradicted)
  or a fact about the visitor the premise does not mention (neutral); else `gen_nli`'s world facts."""
  if rng.rand() >= DIFFICULTY['nli_review_rate']:
    return gen_nli(world, rng, label)
  p, c, food = pick(rng, world.people), pick(rng, CITIES), pick(rng, FOODS)
  polarity = int(rng.randint(2)) if label == 1 else int(label == 0)
  premise = f'{p} had the {food} at a cafe in {c}. {visit_cues(rng, food, polarity, 0.0)}'
  liked = (f'{p} enjoyed the visit.', f'{p} liked the cafe.', f'{p} was happy with the {food}.')
  disliked = (f'{p} did not enjoy the visit.', f'{p} disliked the cafe.', f'{p} was unhappy with the {food}.')
  if label == 1:
    hyp = world.say(p, pick(rng, KIND_RELATIONS['person']), form=int(rng.randint(3)))
  else:
    hyp = pick(rng, liked if label == 0 else disliked)
  return {'premise': premise, 'hypothesis': hyp, 'label': label}


def gen_completion(world, rng, label):
  """label: position (0 or 1) of the correct ending. A story of a cafe visit told with the sentiment
  family's cue words; the ending consistent with it says how the visit was (good / bad)."""
  p = pick(rng, world.people)
  she = world.pron(p)
  c, food = pick(rng, CITIES), pick(rng, FOODS)
  polarity = int(rng.randint(2))
  opener = pick(rng, (f'{p} went to a cafe in {c} and ordered the {food}.', f'{p} stopped in {c} for some {food}.',
                      f'{p} tried the {food} at the market cafe in {c}.'))
  ctx = f'{opener} {visit_cues(rng, food, polarity, DIFFICULTY["completion_distractor_rate"])}'
  verb = pick(rng, ('says', 'writes'))
  good, bad = (f'{cap(she)} {verb} that the visit was {w}.' for w in ('good', 'bad'))
  right, wrong = (good, bad) if polarity else (bad, good)
  endings = [wrong, right] if label else [right, wrong]
  return {'context': ctx, 'endings': endings, 'label': label}


def gen_coref(world, rng, label):
  """label: 1 if the yes/no template's candidate is the referent. The referent is balanced separately."""
  mixed = rng.rand() < DIFFICULTY['coref_mixed_gender_rate']
  a = pick(rng, world.people)
  pool = [p for p in world.people if (world.gender[p] != world.gender[a]) == mixed
          and world.facts[p]['job'] != world.facts[a]['job'] and p != a]
  b = pick(rng, pool)
  ref = int(rng.randint(2))
  x = (a, b)[ref]
  pron = world.pron(x)
  city = pick(rng, CITIES)
  intro = pick(rng, (f'{a} and {b} met at the market in {city}.', f'{a} visited {b} in {city}.',
                     f'{a} and {b} took a trip to {city}.'))
  roles = ''
  if rng.rand() < DIFFICULTY['coref_roles_stated_rate']:
    roles = f' {a} is a {world.facts[a]["job"]} and {b} is a {world.facts[b]["job"]}.'
  act = pick(rng, JOBS[world.facts[x]['job']][1])
  when = pick(rng, ('Later that day,', 'The next morning,', 'After lunch,'))
  text = f'{intro}{roles} {when} {pron} {act}.'
  blank = f'{intro}{roles} {when} _ {act}.'
  cand = x if label == 1 else (b if x == a else a)
  return {'text': text, 'blank_text': blank, 'pronoun': pron, 'candidate': cand, 'options': [a, b],
          'answer': x, 'label': label}


def gen_word_sense(world, rng, label):
  w = pick(rng, sorted(SENSES))
  i = int(rng.randint(2))
  j = i if label == 1 else 1 - i
  t1, t2 = pick(rng, SENSES[w][i][1]), pick(rng, SENSES[w][j][1])
  s1, s2 = fill_slots(world, rng, t1), fill_slots(world, rng, t2)
  if s1 == s2 or t1 == t2:
    return None
  return {'word': w, 'sentence1': s1, 'sentence2': s2, 'label': label}


def gen_sense_topic(world, rng, label):
  """P3's word sense: a sentence with a polysemous word; label: which of its two senses is meant. The
  choices are the senses' topics (e.g. animals / sports for "bat"), the topic family's labels where
  the sense has one."""
  w = pick(rng, sorted(SENSES))
  s = fill_slots(world, rng, pick(rng, SENSES[w][label][1]))
  topics = [SENSES[w][0][0], SENSES[w][1][0]]
  return {'word': w, 'sentence': s, 'options': topics, 'answer': topics[label], 'label': label}


QUESTION_LEADS = ('', 'Quick question: ', 'I wonder: ', 'Please tell me: ', 'Does anyone know: ')


def gen_question_type(world, rng, label):
  qtype = QTYPES[label]
  rev = [r for r in RELATIONS if RELATIONS[r]['rev'] and REV_QTYPE[RELATIONS[r]['kind']] == qtype]
  wh = [r for r in RELATIONS if WH_QTYPE[r] == qtype]
  if rev and (not wh or rng.rand() < 0.6):
    r = pick(rng, rev)
    q = world.rev(r, pick(rng, RELATIONS[r]['values']))
  else:
    r = pick(rng, wh)
    q = world.wh(pick(rng, world.entities[RELATIONS[r]['kind']]), r)
  lead = pick(rng, QUESTION_LEADS)
  return {'question': lead + (q[0].lower() + q[1:] if lead else q), 'label': label}


def make_examples(world, name, gen, counts, num_labels, key):
  """Label-balanced, duplicate-free examples for each split (a key seen in one split is not reused)."""
  rng = rng_for('examples:' + name)
  seen = set()
  out = {}
  for split, n in counts.items():
    exs = []
    tries = 0
    while len(exs) < n:
      tries += 1
      if tries > 200 * n + 1000:
        raise RuntimeError(f'{name}: could not make {n} distinct {split} examples')
      label = len(exs) % num_labels if num_labels else None
      ex = gen(world, rng, label)
      if ex is None or key(ex) in seen:
        continue
      seen.add(key(ex))
      exs.append(ex)
    out[split] = shuffled(rng, exs)
  return out


# ---------------------------------------------------------------------------------------------------
# P3 datasets and templates. A template renders an example to (inputs, answer, choices or None);
# `prefix` is what the template puts before the answer in `targets_pretokenized`.


def options_list(opts, bullet='- '):
  return '\n'.join(bullet + o for o in opts)


def T(name, render, prefix='\n', choices=None, keep=None):
  return dict(name=name, render=render, prefix=prefix, choices=choices, keep=keep)


YES_NO = ['no', 'yes']

TRAIN_DATASETS = {
    'mini_sentiment': dict(
        family='sentiment', task_type='sentiment', num_labels=2, gen=gen_sentiment,
        key=lambda ex: ex['review'],
        templates=[
            T('positive_or_negative', lambda ex: (f"{ex['review']}\nIs this review positive or negative?",
                                                  ['negative', 'positive'][ex['label']]),
              choices=['negative', 'positive']),
            T('user_satisfied', lambda ex: (f"Here is a review left by a customer:\n{ex['review']}\n"
                                            f"Did this customer enjoy the visit?", YES_NO[ex['label']]),
              choices=YES_NO),
            T('good_or_bad', lambda ex: (f"Review: {ex['review']}\nWas the visit good or bad?",
                                         ['bad', 'good'][ex['label']]), prefix=' ', choices=['bad', 'good']),
        ]),
    'mini_topic': dict(
        family='topic', task_type='topic_classification', num_labels=len(TOPICS), gen=gen_topic,
        key=lambda ex: ex['text'],
        templates=[
            T('which_section', lambda ex: (f"Would you find the following text in the animals, food, sports, money, "
                                           f"weather, or health section of a newspaper?\n\n{ex['text']}",
                                           TOPICS[ex['label']]), choices=list(TOPICS)),
            T('classify_question_first', lambda ex: (f"What label best describes this news article?\n{ex['text']}",
                                                     TOPICS[ex['label']]), choices=list(TOPICS)),
            T('which_topic_options', lambda ex: (f"{ex['text']}\n\nWhich topic is this text about? Options: "
                                                 f"{', '.join(TOPICS)}.", TOPICS[ex['label']]),
              prefix=' ', choices=list(TOPICS)),
        ]),
    'mini_reading': dict(
        family='multiple_choice_qa', task_type='multiple_choice_qa', num_labels=0, gen=gen_reading,
        key=lambda ex: (ex['context'], ex['question']),
        templates=[
            T('answer_given_options', lambda ex: (f"Read the text and answer the question.\n\n{ex['context']}\n\n"
                                                  f"Question: {ex['question']}\nOptions:\n{options_list(ex['options'])}"
                                                  f"\nAnswer:", ex['answer']), choices='example'),
            T('question_first_choices', lambda ex: (f"{ex['question']}\n\nChoices:\n{options_list(ex['options'])}\n\n"
                                                    f"Context: {ex['context']}", ex['answer']), choices='example'),
            T('no_options', lambda ex: (f"{ex['context']}\n\n{ex['question']}", ex['answer'])),
        ]),
    'mini_extractive_qa': dict(
        family='extractive_qa', task_type='extractive_qa', num_labels=0, gen=gen_extractive,
        key=lambda ex: (ex['context'], ex['question']),
        templates=[
            T('based_on', lambda ex: (f"\nExtract the answer to the question from the following context.\n"
                                      f"Question: {ex['question']}\nContext: {ex['context']}", ex['answer'])),
            T('answer_the_following_q', lambda ex: (f"Given the following passage\n\n\"{ex['context']}\",\n\n"
                                                    f"answer the following question. {ex['question']}",
                                                    ex['answer'])),
            T('question_context_answer', lambda ex: (f"Question: {ex['question']}\n\nContext: {ex['context']}\n\n"
                                                     f"Answer:", ex['answer']), prefix=' '),
        ]),
    'mini_paraphrase': dict(
        family='paraphrase', task_type='paraphrase_identification', num_labels=2, gen=gen_paraphrase,
        key=lambda ex: ex['sentence1'],
        templates=[
            T('same_meaning', lambda ex: (f"Sentence 1: {ex['sentence1']}\nSentence 2: {ex['sentence2']}\n"
                                          f"Do these two sentences mean the same thing?", YES_NO[ex['label']]),
              choices=YES_NO),
            T('equivalent', lambda ex: (f"Does the sentence \"{ex['sentence1']}\" paraphrase (that is, mean the same "
                                        f"thing as) the sentence \"{ex['sentence2']}\"? Yes or no?",
                                        YES_NO[ex['label']]),
              prefix=' ', choices=YES_NO),
            T('generate_paraphrase', lambda ex: (f"Paraphrase the following sentence: {ex['sentence1']}",
                                                 ex['sentence2']), keep=lambda ex: ex['label'] == 1),
        ]),
    'mini_closed_book_qa': dict(
        family='closed_book_qa', task_type='closed_book_qa', num_labels=2, gen=gen_closed_book,
        key=lambda ex: (ex['entity'], ex['relation'], ex['claim_value']),
        templates=[
            T('answer_question', lambda ex: (f"Answer the following question.\n{ex['question']}", ex['answer'])),
            T('pick_answer', lambda ex: (f"{ex['question']}\n\nChoose from:\n{options_list(ex['options'])}",
                                         ex['answer']), choices='example'),
            T('true_or_false', lambda ex: (f"True or false: {ex['claim']}", ['false', 'true'][ex['label']]),
              prefix=' ', choices=['false', 'true']),
            T('yes_or_no', lambda ex: (f"{ex['yn_question']} Answer yes or no.", YES_NO[ex['label']]),
              prefix=' ', choices=YES_NO),
        ]),
}

NLI_CHOICES = ['yes', 'maybe', 'no']  # entailment, neutral, contradiction (T0's CB order)


def _strip_period(s):
  return s[:-1] if s.endswith('.') else s


HELDOUT_DATASETS = {
    'mini_nli': dict(
        family='nli', task_type='natural_language_inference', num_labels=3, gen=gen_nli_review,
        key=lambda ex: ex['premise'], num_choices=3,
        templates=[
            T('does_it_follow_that', lambda ex: (f"Given that {ex['premise']} Does it follow that "
                                                 f"{_strip_period(ex['hypothesis'])}? Yes, no, or maybe?",
                                                 NLI_CHOICES[ex['label']]), prefix=' ', choices=NLI_CHOICES),
            T('can_we_infer', lambda ex: (f"Suppose {ex['premise']} Can we infer that \"{ex['hypothesis']}\"? "
                                          f"Yes, no, or maybe?", NLI_CHOICES[ex['label']]), prefix=' ',
              choices=NLI_CHOICES),
            T('justified_in_saying', lambda ex: (f"{ex['premise']} Are we justified in saying that "
                                                 f"\"{ex['hypothesis']}\"? Yes, no, or maybe?",
                                                 NLI_CHOICES[ex['label']]), prefix=' ', choices=NLI_CHOICES),
        ]),
    'mini_completion': dict(
        family='sentence_completion', task_type='sentence_completion', num_labels=2, gen=gen_completion,
        key=lambda ex: ex['context'], num_choices=2,
        templates=[
            T('story_continuation_and_options',
              lambda ex: (f"What is a possible continuation for the following story?\n\n{ex['context']}\n\n"
                          f"Choose from the following options:\n{options_list(ex['endings'])}\n",
                          ex['endings'][ex['label']]), prefix='\n\n', choices='example'),
            T('complete_first_then',
              lambda ex: (f"Complete the description with an appropriate ending:\n{ex['context']} ...\n\n"
                          + '\n\n'.join(f'({c}) {e}' for c, e in zip('ab', ex['endings'])) + '\n',
                          ex['endings'][ex['label']]), prefix='', choices='example'),
            T('what_happens_next', lambda ex: (f"{ex['context']}\nWhat happens next?", ex['endings'][ex['label']]),
              prefix=' ', choices='example'),
        ]),
    'mini_coref': dict(
        family='coreference', task_type='coreference_resolution', num_labels=2, gen=gen_coref,
        key=lambda ex: ex['text'], num_choices=2,
        templates=[
            T('does_the_pronoun_refer_to',
              lambda ex: (f"{ex['text']} In the previous sentence, does the pronoun \"{ex['pronoun']}\" refer to "
                          f"{ex['candidate']}? Yes or no?", YES_NO[ex['label']]), prefix=' ', choices=YES_NO),
            T('fill_in_the_blank',
              lambda ex: (f"Fill in the _ in the below sentence:\n{ex['blank_text']}\n\nChoices:\n"
                          f"{options_list(ex['options'])}\n\nAnswer:", ex['answer']), prefix=' ',
              choices='example'),
        ]),
    'mini_word_sense': dict(
        family='word_sense', task_type='word_sense_disambiguation', num_labels=2, gen=gen_sense_topic,
        key=lambda ex: ex['sentence'], num_choices=2,
        templates=[
            T('which_sense', lambda ex: (f"{ex['sentence']}\nIn this sentence, is the word \"{ex['word']}\" about "
                                         f"{ex['options'][0]} or {ex['options'][1]}?", ex['answer']),
              choices='example'),
            T('sense_options', lambda ex: (f"Which meaning of \"{ex['word']}\" is used in the sentence below?\n"
                                           f"{ex['sentence']}\nOptions:\n{options_list(ex['options'])}",
                                           ex['answer']), prefix=' ', choices='example'),
        ]),
}


def _split_facts(world):
  """Closed-book QA: train and validation ask about disjoint facts."""
  facts = shuffled(rng_for('closed_book_facts'), world.all_facts())
  n_val = len(facts) // 5
  return {'train': sorted(facts[n_val:]), 'validation': sorted(facts[:n_val])}


def p3_examples(world):
  """dataset -> split -> examples."""
  out = {}
  ho = {'train': SIZES['heldout_train'], 'validation': SIZES['heldout_validation']}
  for name, ds in TRAIN_DATASETS.items():
    tr = {'train': min(SIZES['p3_train'], P3_TRAIN_LIMITS.get(name, SIZES['p3_train'])),
          'validation': SIZES['p3_validation']}
    if name == 'mini_closed_book_qa':
      facts = _split_facts(world)
      rng = rng_for('examples:' + name)
      seen, res = set(), {}
      for split, n in tr.items():
        exs = []
        for _ in range(200 * n + 1000):
          if len(exs) == n:
            break
          ex = gen_closed_book(world, rng, len(exs) % 2, facts[split])
          if ds['key'](ex) not in seen:
            seen.add(ds['key'](ex))
            exs.append(ex)
        if len(exs) < n:
          raise RuntimeError(f'{name}: could not make {n} distinct {split} examples')
        res[split] = shuffled(rng, exs)
      out[name] = res
    else:
      out[name] = make_examples(world, name, ds['gen'], tr, ds['num_labels'], ds['key'])
  for name, ds in HELDOUT_DATASETS.items():
    ex = make_examples(world, name, ds['gen'], ho, ds['num_labels'], ds['key'])
    if name == 'mini_coref':  # balance the referent (first / second option) too
      for split in ex:
        for i, e in enumerate(ex[split]):
          if (i % 2 == 0) != (e['answer'] == e['options'][0]):
            e['options'] = e['options'][::-1]
    out[name] = ex
  return out


def render(template, ex):
  inputs, answer = template['render'](ex)
  ch = template['choices']
  choices = None
  if ch == 'example':
    choices = list(ex['endings'] if 'endings' in ex else ex['options'])
  elif ch is not None:
    choices = list(ch)
  if choices is not None:
    assert choices.count(answer) == 1, (template['name'], answer, choices)
  return inputs, answer, choices


# ---------------------------------------------------------------------------------------------------
# CrossFit tasks


def _clean(s):
  return re.sub(r'\s+', ' ', s.replace('\t', ' ')).strip()


CROSSFIT_TASKS = {
    # name: (generator, labels or None (text-to-text), input fn, output fn, metric, role flags)
    'mini_sentiment': dict(gen=gen_sentiment, labels=['negative', 'positive'], metric='ACC',
                           inp=lambda ex: 'sentence: ' + ex['review']),
    'mini_topic': dict(gen=gen_topic, labels=list(TOPICS), metric='Classification-F1', inp=lambda ex: ex['text']),
    'mini_question_type': dict(gen=gen_question_type, labels=list(QTYPES), metric='Classification-F1',
                               inp=lambda ex: ex['question']),
    'mini_fact_check': dict(gen=None, labels=['false', 'true'], metric='ACC', inp=lambda ex: ex['claim']),
    'mini_nli': dict(gen=gen_nli, labels=['entailment', 'neutral', 'contradiction'], metric='ACC', is_nli=True,
                     inp=lambda ex: f"premise: {ex['premise']} [SEP] hypothesis: {ex['hypothesis']}"),
    'mini_paraphrase': dict(gen=gen_paraphrase, labels=['not_equivalent', 'equivalent'], metric='ACC',
                            is_paraphrase=True,
                            inp=lambda ex: f"sentence 1: {ex['sentence1']} [SEP] sentence 2: {ex['sentence2']}"),
    'mini_word_sense': dict(gen=gen_word_sense, labels=['false', 'true'], metric='ACC',
                            inp=lambda ex: f"word: {ex['word']} [SEP] sentence 1: {ex['sentence1']} [SEP] "
                                           f"sentence 2: {ex['sentence2']}"),
    'mini_coref': dict(gen=gen_coref, labels=['false', 'true'], metric='ACC',
                       inp=lambda ex: f"text: {ex['text']} [SEP] span 1: {ex['candidate']} [SEP] "
                                      f"span 2: {ex['pronoun']}"),
    'mini_squad': dict(gen=gen_extractive, labels=None, metric='QA-F1', qa_subtype='mrc',
                       inp=lambda ex: f"question: {ex['question']} [SEP] context: {ex['context']}",
                       out=lambda ex: [ex['answer']]),
    'mini_closed_book_qa': dict(gen=None, labels=None, metric='EM', qa_subtype='other',
                                inp=lambda ex: ex['question'],
                                out=lambda ex: [ex['answer']] + ([ex['answer'].split(' ', 1)[1]]
                                                                 if ' ' in ex['answer'] else [])),
}
CROSSFIT_CLS_SOURCES = ['mini_fact_check', 'mini_question_type', 'mini_sentiment', 'mini_topic']
CROSSFIT_CLS_TARGETS = ['mini_coref', 'mini_nli', 'mini_paraphrase', 'mini_word_sense']
CROSSFIT_PARTITIONS = {
    'cls_to_cls': {'source': CROSSFIT_CLS_SOURCES, 'target': CROSSFIT_CLS_TARGETS,
                   'qin2023_setting': 'Cls->Cls'},
    'both_to_cls': {'source': sorted(['mini_sentiment', 'mini_topic', 'mini_closed_book_qa', 'mini_squad']),
                    'target': CROSSFIT_CLS_TARGETS, 'qin2023_setting': 'Both->Cls'},
    'non_paraphrase_cls_to_paraphrase': {
        'source': sorted(CROSSFIT_CLS_SOURCES + ['mini_coref', 'mini_nli', 'mini_word_sense']),
        'target': ['mini_paraphrase'], 'qin2023_setting': 'NP->P'},
    'cls_to_non_cls': {'source': CROSSFIT_CLS_SOURCES, 'target': ['mini_squad'],
                       'qin2023_setting': 'Cls->Non-Cls'},
}


def crossfit_lines(world):
  """task -> (k, {(seed, split): [line, ...]}, labels)."""
  out = {}
  all_facts = world.all_facts()
  for task, spec in CROSSFIT_TASKS.items():
    rng = rng_for('crossfit:' + task)
    labels = spec['labels']
    if task == 'mini_fact_check':
      gen = lambda w, r, label: gen_closed_book(w, r, label, all_facts)
    elif task == 'mini_closed_book_qa':
      gen = lambda w, r, label: gen_closed_book(w, r, int(r.randint(2)), all_facts)
    else:
      gen = spec['gen']
    if labels:
      n_lab = len(labels)
      counts = {'pool': SIZES['crossfit_pool_per_label'] * n_lab,
                'test': n_lab * int(math.ceil(SIZES['crossfit_test'] / n_lab))}
    else:
      n_lab = 0
      counts = {'pool': SIZES['crossfit_t2t_pool'], 'test': SIZES['crossfit_test']}
    seen, data = set(), {}
    for split, n in counts.items():
      rows = []
      tries = 0
      while len(rows) < n:
        tries += 1
        if tries > 200 * n + 1000:
          raise RuntimeError(f'CrossFit {task}: could not make {n} distinct {split} examples')
        label = len(rows) % n_lab if n_lab else int(rng.randint(3))
        ex = gen(world, rng, label)
        if ex is None:
          continue
        inp = _clean(spec['inp'](ex))
        if inp in seen:
          continue
        seen.add(inp)
        outs = [labels[ex['label']]] if labels else spec['out'](ex)
        rows.append((inp, [_clean(o) for o in outs], outs[0]))
      data[split] = shuffled(rng, rows)
    k = 16 if labels else 32
    files = {}
    for seed in CROSSFIT_SEEDS:
      perm = np.random.RandomState(seed).permutation(len(data['pool']))
      pool = [data['pool'][int(i)] for i in perm]
      if labels:  # FewshotGymClassificationDataset: first k of each label, then the next k of each
        train, dev, cnt = [], [], {}
        for row in pool:
          c = cnt.get(row[2], 0)
          (train if c < k else dev if c < 2 * k else []).append(row)
          cnt[row[2]] = c + 1
      else:  # FewshotGymTextToTextDataset: first k, next k
        train, dev = pool[:k], pool[k:2 * k]
      for split, rows in (('train', train), ('dev', dev), ('test', data['test'])):
        files[(seed, split)] = ['\t'.join([inp] + outs) for inp, outs, _ in rows]
    out[task] = (k, files, labels)
  return out


# ---------------------------------------------------------------------------------------------------
# Text corpus


def corpus_documents(world):
  """OpenWebText-style documents (paragraphs joined by newlines) that state the world's facts and scripts."""
  rng = rng_for('corpus')
  say = lambda e, r: world.say(e, r, form=int(rng.randint(3)))
  fact = world.facts
  people_with = lambda rel, v: [p for p in world.people if fact[p][rel] == v]
  tastes = lambda f: f'{cap(f)} {agree(f)["tastes"]} {fact[f]["taste"]}.'
  docs = []
  for a in ANIMALS:
    f = fact[a]
    p1 = [say(a, 'size'), say(a, 'colour'), say(a, 'habitat')]
    p2 = [say(a, 'diet'), say(a, 'sound'), f'In the {f["habitat"]}, the {a} looks for {f["diet"]} every day.']
    owners = people_with('pet', a)
    if owners:
      o = pick(rng, owners)
      p3 = [f'{o} has a pet {a}.', f'{cap(world.pron(o, "poss"))} {a} is {f["colour"]} and it {f["sound"]} at night.',
            f'{o} feeds it {f["diet"]}.']
    else:
      n = pick(rng, world.people)
      p3 = [f'One day, {n} saw {an(a)} in the {f["habitat"]}.', f'It was {f["colour"]} and {f["size"]}.',
            f'{cap(world.pron(n))} heard that it {f["sound"]} at night.']
    docs.append([p1, p2, p3])
    n = pick(rng, world.people)
    docs.append([[f'Have you ever seen {an(a)}?', say(a, 'colour'), say(a, 'size')],
                 [f'{n} walked into the {f["habitat"]} one evening.', f'There {world.pron(n)} saw {an(a)} eating '
                  f'{f["diet"]}.', f'The {a} {f["sound"]} and ran away.']])
  for p in world.people:
    f = fact[p]
    she, her = world.pron(p), world.pron(p, 'poss')
    work, acts = JOBS[f['job']]
    c = f['home']
    docs.append([[say(p, 'job'), say(p, 'home'), f'{c} is near {fact[c]["near"]}.'],
                 [f'Every morning, {she} goes to the {work}.', f'{cap(she)} {acts[0]}.',
                  f'Later, {she} {acts[1]}.', f'Before going home, {she} {acts[2]}.'],
                 [say(p, 'pet'), say(p, 'food'), tastes(f['food'])]])
    pet = f['pet']
    scene = pick(rng, CLIMATES[fact[c]['climate']])
    act1, act2 = shuffled(rng, acts)[:2]
    when = pick(rng, ('At dawn', 'Early today', 'On Monday'))
    docs.append([[f'A day in the life of {p}.', f'{when}, {p} wakes up in {c}.',
                  f'It is {fact[c]["climate"]} in {c} today.',
                  f'{cap(she)} {pick(rng, ("looks out of the window", "opens the door", "steps outside"))}.',
                  f'{cap(scene)}.'],
                 [f'Then {she} goes to work at the {work}, because {she} is a {f["job"]}.', f'{cap(she)} {act1}.',
                  f'After lunch, {she} {act2}.'],
                 [f'In the evening, {she} eats {f["food"]}.', tastes(f['food']),
                  f'At night, {her} pet {pet} {fact[pet]["sound"]}.']])
  for i, a in enumerate(world.people):  # two people meet: pronouns only where the genders differ
    b = world.people[(i * 7 + 5) % len(world.people)]
    if fact[a]['job'] == fact[b]['job'] or a == b:
      b = world.people[(i + 1) % len(world.people)]
    c = pick(rng, CITIES)
    ra, rb = (world.pron(a), world.pron(b)) if world.gender[a] != world.gender[b] else (a, b)
    docs.append([[f'{a} and {b} are old friends.', f'{a} is a {fact[a]["job"]} and {b} is a {fact[b]["job"]}.',
                  f'Last week, they met in {c}.'],
                 [f'In the morning, {ra} {pick(rng, JOBS[fact[a]["job"]][1])}.',
                  f'In the afternoon, {rb} {pick(rng, JOBS[fact[b]["job"]][1])}.',
                  f'In the evening, {a} and {b} ate {fact[c]["dish"]} together.']])
  for c in CITIES:
    f = fact[c]
    scenes = CLIMATES[f['climate']]
    docs.append([[f'{c} is a town near {f["near"]}.', say(c, 'climate'), f'When it is {f["climate"]}, {scenes[0]}.',
                  f'On most days, people in {c} look outside and see that {scenes[1]}.'],
                 [say(c, 'dish'), tastes(f['dish']), f'Visitors to {c} often buy {f["dish"]} at the market.']])
    residents = [f'{p} is a {fact[p]["job"]} in {c}.' for p in people_with('home', c)]
    docs.append([[f'Many people live in {c}.'] + residents,
                 [say(c, 'near'), f'It is {f["climate"]} there today, so {pick(rng, scenes)}.',
                  f'People say that maybe it will be {f["climate"]} in {c} tomorrow too.']])
    for climate, sc in sorted(CLIMATES.items()):
      if climate != f['climate'] and rng.rand() < 0.3:
        docs.append([[f'It was {climate} in {c} yesterday.',
                      f'That is unusual, because {c} is usually {f["climate"]}.'],
                     [f'When it is {climate}, {sc[0]}.', f'When it is {climate}, {sc[1]}.',
                      f'Maybe it will be {f["climate"]} again tomorrow.']])
  for food in FOODS:
    g = agree(food)
    towns = [c for c in CITIES if fact[c]['dish'] == food]
    fans = people_with('food', food)
    p2 = ([say(c, 'dish') for c in towns] + [say(p, 'food') for p in fans]
          or [f'Nobody in the towns eats much {food}.'])
    docs.append([[say(food, 'taste'), f'Many cooks like {food} because {g["it"]} {g["is"]} {fact[food]["taste"]}.',
                  f'You can buy {food} at most markets.'],
                 p2 + [f'{cap(food)} {g["is"]} best when {g["it"]} {g["is"]} fresh.']])
  qa_rng = rng_for('corpus:faq')
  facts = world.all_facts()
  for i in range(30):  # FAQ pages: questions with yes / no / true / false answers and full sentences
    paras = []
    for k, (e, r) in enumerate([facts[int(j)] for j in qa_rng.permutation(len(facts))[:3]]):
      v = fact[e][r]
      w = other_value(qa_rng, r, v)
      true = world.say(e, r, form=int(qa_rng.randint(3)))
      false = world.say(e, r, v=w, form=int(qa_rng.randint(3)))
      kind = (i + k) % 5
      if kind == 0:
        paras.append([f'Question: {world.wh(e, r)}', f'Answer: {true}'])
      elif kind == 1:
        a, b = shuffled(qa_rng, [v, w])
        paras.append([f'Question: {world.wh(e, r)[:-1]}, {a} or {b}?', f'Answer: {true}'])
      elif kind == 2:
        paras.append([f'Question: {cap(world.yn(e, r, v))}', 'Answer: yes.', true])
      elif kind == 3:
        paras.append([f'Question: {cap(world.yn(e, r, w))}', 'Answer: no.', true])
      else:
        paras.append([f'Some people say: {false}', 'That is false.', f'It is true that {decap(true)}'])
    docs.append(paras)
  sent_rng = rng_for('corpus:reviews')
  for i in range(40):
    pos = i % 2
    end = pick(sent_rng, (('I have only negative things to say.', 'It was a bad visit.', 'Would I go again? No.'),
                          ('I have only positive things to say.', 'It was a good visit.',
                           'Would I go again? Yes.'))[pos])
    docs.append([[gen_sentiment(world, sent_rng, pos)['review']], [gen_sentiment(world, sent_rng, pos)['review']],
                 [end]])
  topic_rng = rng_for('corpus:topics')
  for topic in TOPICS:
    for i in range(8):
      sents = [fill_slots(world, topic_rng, pick(topic_rng, TOPIC_SENTENCES[topic])) for _ in range(4)]
      sents += [fill_slots(world, topic_rng, s) for _, _, s in shuffled(topic_rng, sense_sentences(topic))[:2]]
      sents = list(dict.fromkeys(sents))
      docs.append([[f'Here is the latest news about {topic}.'] + sents[:len(sents) // 2], sents[len(sents) // 2:]])
  for w in sorted(SENSES):  # each sense of each polysemous word, in its own paragraph
    for order in (0, 1):
      docs.append([[fill_slots(world, rng, s) for s in SENSES[w][i][1]] for i in (order, 1 - order)])
    gloss = GLOSSES[w]
    docs.append([[f'The word {w} has two meanings.', 'The two meanings are not the same.'],
                 [f'In the first meaning, {w} means {gloss[0]}.', f'This meaning is about {SENSES[w][0][0]}.',
                  f'Here is an example: {fill_slots(world, rng, pick(rng, SENSES[w][0][1]))}'],
                 [f'In the second meaning, {w} means {gloss[1]}.', f'This meaning is about {SENSES[w][1][0]}.',
                  f'Here is an example: {fill_slots(world, rng, pick(rng, SENSES[w][1][1]))}']])
  texts = ['\n'.join(' '.join(p) for p in d) for d in docs]
  return shuffled(rng, list(dict.fromkeys(texts)))


# ---------------------------------------------------------------------------------------------------
# Vocabulary


def train_vocab(texts: Sequence[str]) -> bytes:
  import sentencepiece as spm
  lines = [line.strip() for t in texts for line in t.split('\n') if line.strip()]
  f = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=f, vocab_size=VOCAB_SIZE, model_type='bpe',
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece='<pad>', eos_piece='</s>', unk_piece='<unk>',
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, character_coverage=1.0,
      normalization_rule_name='nmt_nfkc', minloglevel=2)
  return f.getvalue()


# ---------------------------------------------------------------------------------------------------
# Writing


def _canonicalize_tfrecords(subset_dir, split):
  """Rewrites shards with deterministic protobuf serialization (sorted feature maps): byte-stable output."""
  import tensorflow as tf
  for path in sorted(tf.io.gfile.glob(os.path.join(subset_dir, f'{split}.tfrecord-*'))):
    recs = [tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
            for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path) as w:
      for r in recs:
        w.write(r)


def _json_dump(obj, path):
  with open(path, 'w', encoding='utf-8') as f:
    f.write(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + '\n')


def generate(out_dir: str) -> dict:
  """Writes the benchmark under `out_dir` (its p3/, crossfit/, text/, vocab/ and manifest.json are
  replaced; other files such as README.md are kept). Returns the manifest."""
  import sentencepiece as spm
  from promptjax.tasks import p3 as p3lib

  world = World()
  examples = p3_examples(world)

  # Render every P3 subset (text only), so the vocabulary can see it.
  subsets = []  # (subset, dataset, spec, template, split, rows) rows: (inputs, answer, choices)
  for role, table in (('train', TRAIN_DATASETS), ('heldout', HELDOUT_DATASETS)):
    for dname, ds in table.items():
      for tpl in ds['templates']:
        name = f'{dname}_{tpl["name"]}' + ('_score_eval' if role == 'heldout' else '')
        for split in ('train', 'validation'):
          rows = [render(tpl, ex) for ex in examples[dname][split] if tpl['keep'] is None or tpl['keep'](ex)]
          subsets.append((name, dname, ds, tpl, role, split, rows))
  cf = crossfit_lines(world)
  docs = corpus_documents(world)

  texts = list(docs)
  for name, dname, ds, tpl, role, split, rows in subsets:
    for inputs, answer, choices in rows:
      texts.append(inputs)
      texts.extend(choices or [answer])
  for task, (k, files, labels) in sorted(cf.items()):
    for key in sorted(files):
      texts.extend(line.replace('\t', '\n') for line in files[key])
  model = train_vocab(texts)
  sp = spm.SentencePieceProcessor(model_proto=model)

  def enc(s):
    ids = sp.encode(s)
    if 2 in ids:
      raise ValueError(f'unknown piece in {s!r}')
    return ids

  for sub in ('p3', 'crossfit', 'text', 'vocab'):
    shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
  os.makedirs(os.path.join(out_dir, 'vocab'), exist_ok=True)
  with open(os.path.join(out_dir, 'vocab', 'mini_spm.model'), 'wb') as f:
    f.write(model)

  # P3
  manifest_subsets = {}
  for name, dname, ds, tpl, role, split, rows in subsets:
    records = []
    for i, (inputs, answer, choices) in enumerate(rows):
      if role == 'train':
        r = {'inputs': enc(inputs), 'inputs_pretokenized': inputs,
             'targets': enc(tpl['prefix'] + answer) + [EOS_ID], 'targets_pretokenized': tpl['prefix'] + answer}
        if choices is not None:
          r['answer_choices'] = choices
        records.append(r)
      else:
        for j, c in enumerate(choices):
          records.append({'answer_choices': choices, 'idx': [i, j], 'inputs': enc(inputs),
                          'inputs_pretokenized': inputs, 'is_correct': c == answer,
                          'targets': enc(tpl['prefix'] + c) + [EOS_ID], 'targets_pretokenized': tpl['prefix'] + c,
                          'weight': 1.0})
    sdir = os.path.join(out_dir, 'p3', name)
    p3lib.write_p3_split(sdir, split, records)
    _canonicalize_tfrecords(sdir, split)
    fixed = tpl['choices'] if isinstance(tpl['choices'], list) else None
    nch = len(rows[0][2]) if rows[0][2] is not None else None
    m = manifest_subsets.setdefault(name, {
        'dataset': dname, 'family': ds['family'], 'task_type': ds['task_type'], 'role': role,
        'template': tpl['name'], 'score_eval': role == 'heldout', 'generative': tpl['choices'] is None,
        'answer_choices': fixed, 'answer_choices_per_example': tpl['choices'] == 'example',
        'num_choices': nch, 'random_baseline': (1.0 / nch) if nch else None, 'target_prefix': tpl['prefix'],
        'metric': 'exact_match' if tpl['choices'] is None else 'rank_classification_accuracy',
        'splits': {}})
    m['splits'][split] = {'examples': len(rows), 'records': len(records),
                          'inputs_max_tokens': max(len(r['inputs']) for r in records),
                          'targets_max_tokens': max(len(r['targets']) for r in records)}

  families = {}
  for table, role in ((TRAIN_DATASETS, 'train'), (HELDOUT_DATASETS, 'heldout')):
    for dname, ds in table.items():
      fam = families.setdefault(ds['family'], {'role': role, 'task_type': ds['task_type'], 'datasets': []})
      fam['datasets'].append(dname)
  train_subsets = sorted(n for n, m in manifest_subsets.items() if m['role'] == 'train')
  heldout_subsets = sorted(n for n, m in manifest_subsets.items() if m['role'] == 'heldout')

  # CrossFit
  cf_manifest = {}
  for task, (k, files, labels) in sorted(cf.items()):
    tdir = os.path.join(out_dir, 'crossfit', task)
    os.makedirs(tdir)
    names = []
    for (seed, split), lines in sorted(files.items()):
      fname = f'{task}_{k}_{seed}_{split}.tsv'
      names.append(fname)
      with open(os.path.join(tdir, fname), 'w', encoding='utf-8') as f:
        f.write(''.join(line + '\n' for line in lines))
    spec = CROSSFIT_TASKS[task]
    cf_manifest[task] = {
        'metric': spec['metric'], 'type': 'classification' if labels else 'non-classification', 'k': k,
        'k_rule': 'per_label' if labels else 'total', 'labels': labels, 'is_nli': spec.get('is_nli', False),
        'is_paraphrase': spec.get('is_paraphrase', False), 'is_qa': 'qa_subtype' in spec,
        'qa_subtype': spec.get('qa_subtype'), 'test_size': len(files[(CROSSFIT_SEEDS[0], 'test')]),
        'files': sorted(names)}

  # Text
  tdir = os.path.join(out_dir, 'text')
  os.makedirs(tdir)
  shards = []
  for s in range(TEXT_SHARDS):
    fname = f'mini_owt-{s:05d}-of-{TEXT_SHARDS:05d}.jsonl'
    shards.append(fname)
    with open(os.path.join(tdir, fname), 'w', encoding='utf-8') as f:
      for d in docs[s::TEXT_SHARDS]:
        f.write(json.dumps({'text': d}, sort_keys=True, ensure_ascii=False) + '\n')

  verbalizers = sorted({c for m in manifest_subsets.values() for c in (m['answer_choices'] or [])})
  manifest = {
      'name': 'promptjax mini benchmark',
      'generator': 'tools/make_mini_benchmark.py',
      'regenerate': '.venv/bin/python tools/make_mini_benchmark.py --out promptjax/tasks/data',
      'seed': SEED, 'sizes': SIZES, 'difficulty': DIFFICULTY,
      'vocab': {'path': 'vocab/mini_spm.model', 'pieces': sp.get_piece_size(), 'extra_ids': 100,
                'pad_id': 0, 'eos_id': 1, 'unk_id': 2, 'bos_id': -1, 'model_type': 'bpe',
                'verbalizers': verbalizers},
      'p3': {'dir': 'p3', 'splits': ['train', 'validation'], 'families': families,
             'train_families': sorted(f for f, v in families.items() if v['role'] == 'train'),
             'heldout_families': sorted(f for f, v in families.items() if v['role'] == 'heldout'),
             'train_subsets': train_subsets, 'heldout_subsets': heldout_subsets,
             'subsets': manifest_subsets},
      'crossfit': {'dir': 'crossfit', 'seeds': list(CROSSFIT_SEEDS), 'splits': list(CROSSFIT_SPLITS),
                   'path_pattern': '{task}/{task}_{k}_{seed}_{split}.tsv', 'tasks': cf_manifest,
                   'partitions': CROSSFIT_PARTITIONS},
      'text': {'dir': 'text', 'format': 'jsonl', 'field': 'text', 'shards': shards, 'documents': len(docs),
               'split': 'train'},
  }
  _json_dump(manifest, os.path.join(out_dir, 'manifest.json'))
  return manifest


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'promptjax', 'tasks', 'data'))
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  m = generate(args.out)
  n_train = len(m['p3']['train_subsets'])
  n_held = len(m['p3']['heldout_subsets'])
  print(f'wrote {args.out}: {n_train} training + {n_held} held-out P3 subsets, '
        f'{len(m["crossfit"]["tasks"])} CrossFit tasks, {m["text"]["documents"]} documents, '
        f'vocab of {m["vocab"]["pieces"]} pieces')


if __name__ == '__main__':
  main()
